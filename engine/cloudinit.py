"""The per-instance NoCloud seed documents (see shared notes: cloud-init facts).

vendor-data carries the user, the SSH keys and phone_home; user-data is the client's boot command verbatim
(an empty #cloud-config when there is none: a 404 would make cloud-init fall back to no datasource);
meta-data carries the instance id, the hostname and the client's metadata under `meta`.
All YAML is produced by a YAML dumper, never by templating.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import yaml

EMPTY_USER_DATA = "#cloud-config\n{}\n"


@dataclass(frozen=True)
class SeedContext:
    instance_id: str
    hostname: str
    user: str
    ssh_keys: list[str]
    metadata: dict[str, Any]
    boot_command: str | None
    phone_home_url: str
    project_id: str | None = None


def _dump(document: dict[str, Any]) -> str:
    # Non-ASCII characters escaped: written as they are, YAML readers take U+0085, U+2028 and U+2029 for line breaks,
    # and a metadata value with one would reach the guest changed.
    return str(yaml.safe_dump(document, default_flow_style=False, sort_keys=False, allow_unicode=False))


def meta_data(ctx: SeedContext) -> str:
    document: dict[str, Any] = {"instance-id": ctx.instance_id, "local-hostname": ctx.hostname, "meta": ctx.metadata}
    if ctx.project_id:
        document["project_id"] = ctx.project_id
    return _dump(document)


def user_data(ctx: SeedContext) -> str:
    return ctx.boot_command if ctx.boot_command else EMPTY_USER_DATA


def vendor_data(ctx: SeedContext) -> str:
    document = {
        "users": [
            {
                "name": ctx.user,
                "gecos": "Provisioned user",
                "groups": ["sudo"],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "lock_passwd": True,
                "ssh_authorized_keys": list(ctx.ssh_keys),
            }
        ],
        "ssh_pwauth": False,
        "manage_etc_hosts": True,
        "phone_home": {"url": ctx.phone_home_url, "post": ["instance_id", "hostname", "pub_key_ed25519"], "tries": 10},
    }
    return "#cloud-config\n" + _dump(document)


def network_config() -> str:
    """DHCPv4 on every ethernet NIC (cloud-init 25.x asks for network-config; 22.x never does)."""
    return _dump({"version": 2, "ethernets": {"dhcp": {"match": {"name": "e*"}, "dhcp4": True}}})


def smbios_serial(datasource: str, seed_url: str) -> str:
    """The SMBIOS serial a guest reads its seed location from, base64-encoded as PVE's smbios1 wants it."""
    return base64.b64encode(f"ds={datasource};s={seed_url}".encode()).decode()
