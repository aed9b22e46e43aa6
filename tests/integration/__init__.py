"""A live service, simulator or registry on 127.0.0.1 ports; ansible runs against the simulator; Molecule helpers."""
