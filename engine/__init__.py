"""Proxmox provisioner engine."""
