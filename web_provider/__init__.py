"""VISA's "web cloud provider" HTTP contract (see docs/visa.md). Routes, schemas and state mapping only:
no Proxmox logic lives here."""
