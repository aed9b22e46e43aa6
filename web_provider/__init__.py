"""VISA's "web cloud provider" HTTP contract (README.md, "Pointing VISA at it"; the behaviour VISA relies on is
pinned by tests/unit/test_visa_routes.py and tests/integration/test_visa_contract.py). Routes, schemas and state
mapping only: no Proxmox logic lives here."""
