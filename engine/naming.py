"""Proxmox-safe names derived from client-chosen names, and VMIDs read from client-sent ids."""

from __future__ import annotations

import re

_INVALID = re.compile(r"[^A-Za-z0-9-]+")
# ASCII digits only: str.isdigit() also accepts "²" or "٣", which int() then refuses or reads as another number.
_VMID = re.compile(r"[0-9]{1,9}")
MAX_VMID = 999_999_999  # Proxmox's largest VMID
FLAVOUR_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def vm_name(name: str, vmid: int) -> str:
    """A PVE `dns-name` for the VM: invalid characters become '-', at most 63 characters.

    VISA's default prefix is valid already (`VISA-INSTANCE-42`), the reference's (`VISA_INSTANCE`) is not.
    """
    label = _INVALID.sub("-", name).strip("-")[:63].strip("-")
    return label or f"vm-{vmid}"


def hostname(name: str, vmid: int) -> str:
    return vm_name(name, vmid).lower()


def as_vmid(value: str | int) -> int | None:
    """The VMID a client-sent id names, or None when it cannot be one."""
    text = str(value).strip()
    return int(text) if _VMID.fullmatch(text) else None
