"""The project's Proxmox simulator: fakepve (used as a library, never patched) plus what provisioning needs.

A test double of a Proxmox VE cluster, for `make run`'s embedded default, the tests and Molecule. Modules:

* ``cluster``: ClusterSimulator, fakepve with a stateful resize and cluster task list, clone/start durations and
  the emulated boot (a sidecar that plays cloud-init's NoCloud datasource and brings the guest agent up);
* ``cloudinit`` and ``identity``: what the emulated boot reads (the SMBIOS seed) and makes up (addresses, keys);
* ``guests``: real guests instead of the emulated boot (PROVISIONER_SIM_GUESTS=container|vm);
* ``seeding``: nodes, storages, templates and security groups; ``serve``: the simulator on its own event loop;
* ``python -m simulator``: the command line.
"""

from simulator.identity import guest_ipv4
from simulator.seeding import add_running_vms, seed_cluster
from simulator.serve import SimulatorHandle, start_simulator

__all__ = ["SimulatorHandle", "add_running_vms", "guest_ipv4", "seed_cluster", "start_simulator"]
