"""What a guest is started with, and the guest agent's view of its interfaces."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GuestSpec:
    """A guest's hardware as its Proxmox config says: the SMBIOS serial and uuid, NIC MAC, disk, CPUs, memory."""

    serial: str | None  # decoded smbios1 serial, e.g. ds=nocloud-net;s=http://198.18.3.1:4000/seed/<token>/
    uuid: str | None  # smbios1 uuid
    mac: str  # net0's MAC, lower case
    disk_bytes: int
    cores: int = 1
    memory_mb: int = 1024
    # The documents of the VM's Proxmox cloud-init drive (simulator.guests.cidrive), None when it has none.
    cloud_init: dict[str, str] | None = None


def agent_interfaces(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`ip -j addr show` output turned into qemu-ga's guest-network-get-interfaces answer."""
    answer = []
    for link in links:
        addresses = []
        for info in link.get("addr_info", []):
            family = info.get("family")
            if family not in ("inet", "inet6") or "local" not in info:
                continue
            addresses.append(
                {
                    "ip-address": str(ipaddress.ip_address(info["local"])),
                    "ip-address-type": "ipv4" if family == "inet" else "ipv6",
                    "prefix": int(info.get("prefixlen", 0)),
                }
            )
        entry: dict[str, Any] = {"name": link.get("ifname", "")}
        if link.get("address"):
            entry["hardware-address"] = link["address"]
        entry["ip-addresses"] = addresses
        answer.append(entry)
    return answer
