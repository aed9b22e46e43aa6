"""Proxmox's cloud-init drive for real guests: the NoCloud documents qemu-server generates from a VM's config.

A VM whose config has a cloud-init drive (``ide2: <storage>:vm-<vmid>-cloudinit,media=cdrom``) gets, at every
start, a NoCloud seed generated from its ``ciuser``, ``cipassword``, ``sshkeys``, ``ipconfigN``, ``nameserver``,
``searchdomain`` and ``ciupgrade`` options, as PVE::QemuServer::Cloudinit does (``qm cloudinit dump`` prints the
same): user-data with the default user renamed and its keys, meta-data whose instance-id is the SHA-1 of that
content, network-config version 1 with one ``ethN`` per ``netN`` (its MAC, DHCP or static). A QEMU guest gets it as
an ISO 9660 volume labelled ``cidata`` (genisoimage, as Proxmox makes it); a container guest, which has no block
devices, finds the same files in its NoCloud seed directory, ``/var/lib/cloud/seed/nocloud``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

SEED_DIR = "var/lib/cloud/seed/nocloud"
DRIVE = re.compile(r"^(ide|sata|scsi)\d+$")


def has_drive(config: dict[str, Any]) -> bool:
    """True if the VM config carries a Proxmox cloud-init drive."""
    return any(DRIVE.match(key) and "cloudinit" in str(value).split(",")[0] for key, value in config.items())


def documents(config: dict[str, Any], vmid: int) -> dict[str, str] | None:
    """meta-data, user-data and network-config of the VM's cloud-init drive, or None without a drive."""
    if not has_drive(config):
        return None
    user = user_data(config, vmid)
    network = network_config(config)
    digest = hashlib.sha1((user + network).encode(), usedforsecurity=False).hexdigest()
    return {"meta-data": f"instance-id: {digest}\n", "user-data": user, "network-config": network}


def user_data(config: dict[str, Any], vmid: int) -> str:
    hostname = str(config.get("name") or f"VM{vmid}")
    search = str(config.get("searchdomain") or "").split()
    lines = ["#cloud-config", f"hostname: {hostname}", "manage_etc_hosts: true"]
    lines.append(f"fqdn: {hostname}.{search[0]}" if search else f"fqdn: {hostname}")
    username = config.get("ciuser")
    if username is not None:
        lines.append(f"user: {username}")
        if username == "root":
            lines.append("disable_root: False")
    if config.get("cipassword") is not None:
        lines.append(f"password: {config['cipassword']}")
    if config.get("sshkeys"):
        keys = [key.strip() for key in unquote(str(config["sshkeys"])).split("\n") if key.strip()]
        lines.append("ssh_authorized_keys:")
        lines.extend(f"  - {key}" for key in keys)
    lines += ["chpasswd:", "  expire: False"]
    if username != "root":
        lines += ["users:", "  - default"]
    if str(config.get("ciupgrade", "1")) == "1":
        lines.append("package_upgrade: true")
    return "\n".join(lines) + "\n"


def network_config(config: dict[str, Any]) -> str:
    entries: list[dict[str, Any]] = []
    for key in sorted((k for k in config if re.fullmatch(r"net\d+", k)), key=lambda k: int(k[3:])):
        index = key[3:]
        mac = next((v for _, _, v in (p.partition("=") for p in str(config[key]).split(",")) if _mac(v)), None)
        entry: dict[str, Any] = {"type": "physical", "name": f"eth{index}"}
        if mac:
            entry["mac_address"] = mac.lower()
        entry["subnets"] = _subnets(str(config.get(f"ipconfig{index}", "")))
        entries.append(entry)
    servers = str(config.get("nameserver") or "").split()
    if servers:
        entries.append(
            {"type": "nameserver", "address": servers, "search": str(config.get("searchdomain") or "").split()}
        )
    return str(yaml.safe_dump({"version": 1, "config": entries}, sort_keys=False))


def _mac(value: str) -> bool:
    return re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", value) is not None


def _subnets(ipconfig: str) -> list[dict[str, Any]]:
    """qemu-server: no ipconfigN at all means DHCP on the first NIC only; here DHCPv4 unless static is asked."""
    options = dict(part.split("=", 1) for part in ipconfig.split(",") if "=" in part)
    subnets: list[dict[str, Any]] = []
    ip = options.get("ip", "dhcp")
    if ip == "dhcp":
        subnets.append({"type": "dhcp4"})
    elif ip != "manual":
        network = ipaddress.ip_interface(ip)
        static: dict[str, Any] = {"type": "static", "address": str(network.ip), "netmask": str(network.netmask)}
        if options.get("gw"):
            static["gateway"] = options["gw"]
        subnets.append(static)
    ip6 = options.get("ip6")
    if ip6 == "dhcp":
        subnets.append({"type": "dhcp6"})
    elif ip6 == "auto":
        subnets.append({"type": "ipv6_slaac"})
    elif ip6 and ip6 != "manual":
        static6: dict[str, Any] = {"type": "static6", "address": ip6}
        if options.get("gw6"):
            static6["gateway"] = options["gw6"]
        subnets.append(static6)
    return subnets


def write_seed_dir(root: Path, files: dict[str, str]) -> None:
    """Put the drive's documents in a container guest's NoCloud seed directory (replacing an older drive's).

    The one change: network-config matches its interfaces by name only. A container's NIC is a veth, which
    cloud-init counts as virtual and never matches by MAC (it would wait for the "missing" device and give up).
    """
    seed = root / SEED_DIR
    seed.mkdir(parents=True, exist_ok=True)
    for stale in seed.iterdir():
        stale.unlink()
    for name, text in files.items():
        (seed / name).write_text(_without_macs(text) if name == "network-config" else text)


def _without_macs(text: str) -> str:
    document = yaml.safe_load(text)
    for entry in document.get("config", []):
        entry.pop("mac_address", None)
    return str(yaml.safe_dump(document, sort_keys=False))


def remove_seed_dir(root: Path) -> None:
    seed = root / SEED_DIR
    if seed.is_dir():
        for stale in seed.iterdir():
            stale.unlink()


def write_iso(path: Path, files: dict[str, str]) -> None:
    """The drive as an ISO 9660 volume labelled cidata, as qemu-server makes it."""
    source = path.with_suffix(".d")
    source.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (source / name).write_text(text)
    subprocess.run(
        ["genisoimage", "-quiet", "-o", str(path), "-V", "cidata", "-J", "-R", str(source)],
        check=True,
        capture_output=True,
        timeout=60,
    )
