# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The verify role's checks of what Proxmox reports: name, node, cores, memory, disk, power, address, serial, groups.

observed holds the role's registered reads (tasks/read.yml): vm_info (proxmox_vm_info, config current), vm_net
(proxmox_vm_info with the guest agent's network) and firewall (proxmox_firewall_info).
"""

import re

from ansible_collections.provisioner.proxmox.plugins.plugin_utils.verify_text import (
    SEED_PLACEHOLDER,
    as_int,
    from_base64,
)

DISK_SIZE = re.compile(r"(?:^|,)size=([0-9]+(?:[.][0-9]+)?)([KMGT]?)(?:,|$)")
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
GIB = 1 << 30
SERIAL_URL_PATH = re.compile(r"(https?://[^/;\s]+)/[^;\s]*")


class ProxmoxFacts:
    """What the reads say about the VM."""

    def __init__(self, observed, e):
        vms = (observed.get("vm_info") or {}).get("proxmox_vms") or []
        self.vm = vms[0] if vms else {}
        self.exists = bool(self.vm)
        self.status = self.vm.get("status", "")
        self.config = self.vm.get("config") or {}
        self.absent = "no VM {}".format(e["vmid"])
        self.vm_net = observed.get("vm_net") or {}
        self.addresses = agent_addresses(self.vm_net)
        self.firewall = observed.get("firewall") or {}

    def memory_mb(self):
        """PVE 8 writes memory as 2048 or current=2048."""
        found = re.search(r"[0-9]+", str(self.config.get("memory", 512)))
        return int(found.group(0)) if found else 512

    def disk_size(self, disk):
        """The boot disk's size= as written (3584M), '' when unknown."""
        found = DISK_SIZE.search(str(self.config.get(disk, "")))
        return found.group(1) + found.group(2) if found else ""

    def disk_bytes(self, disk):
        found = DISK_SIZE.search(str(self.config.get(disk, "")))
        return int(float(found.group(1)) * SIZE_UNITS[found.group(2)]) if found else -1

    def serial(self):
        """The SMBIOS serial, decoded when smbios1 says base64=1."""
        fields = dict(part.split("=", 1) for part in str(self.config.get("smbios1", "")).split(",") if "=" in part)
        serial = fields.get("serial", "")
        return from_base64(serial) if fields.get("base64", "0") in ("1", "true") else serial

    def firewall_unreadable(self):
        """proxmox_firewall_info's message when the read failed (the task never fails), else None."""
        if self.firewall.get("failed") or ("firewall_rules" not in self.firewall and "msg" in self.firewall):
            return str(self.firewall.get("msg", "unknown error"))
        return None

    def groups(self):
        """The enabled group rules' groups, sorted."""
        rules = self.firewall.get("firewall_rules") or []
        enabled = [r for r in rules if r.get("type") == "group" and r.get("enable") in (1, "1", True)]
        return sorted({r.get("action") for r in enabled})


def agent_addresses(vm_net):
    """The guest agent's IPv4 addresses, loopback and link-local left out."""
    vms = vm_net.get("proxmox_vms") or []
    interfaces = (vms[0].get("network") if vms else None) or []
    addresses = []
    for interface in interfaces:
        for address in interface.get("ip-addresses") or []:
            ip = str(address.get("ip-address", ""))
            if address.get("ip-address-type") == "ipv4" and not re.match(r"^(127\.|169\.254\.)", ip):
                addresses.append(ip)
    return addresses


def checks(f, e):
    """The Proxmox checks, a check being (name, expected, actual, pass); expected None: the check does not run."""
    return [
        ("name", e["name"], f.vm.get("name", f.absent), f.exists and f.vm.get("name", "") == e["name"]),
        ("node", e["node"], f.vm.get("node", f.absent), f.exists and f.vm.get("node", "") == e["node"]),
        cores(f, e),
        memory(f, e),
        disk(f, e),
        ("power_state", e["power_state"], f.vm.get("status", f.absent), f.status == e["power_state"]),
        address(f, e),
        smbios_seed(f, e),
        firewall_groups(f, e),
    ]


def cores(f, e):
    have = as_int(f.config.get("cores", 1))
    passed = f.exists and have == as_int(e["cores"])
    return ("cores", e["cores"], have if f.exists else f.absent, passed)


def memory(f, e):
    wanted = e["memory_mb"]
    expected = None if wanted is None else f"{wanted} MiB"
    actual = f"{f.memory_mb()} MiB" if f.exists else f.absent
    return ("memory", expected, actual, f.exists and f.memory_mb() == as_int(wanted))


def disk(f, e):
    key, wanted = e["disk"], e["disk_gb"]
    expected = None if wanted is None else f"{key} at least {wanted}G"
    size = f.disk_size(key)
    if not f.exists:
        actual = f.absent
    elif size:
        actual = f"{key} size={size}"
    elif key in f.config:
        actual = f"{key} has no size"
    else:
        actual = f"no disk {key}"
    have = f.disk_bytes(key)
    return ("disk", expected, actual, have > 0 and have >= as_int(wanted or 0) * GIB)


def address(f, e):
    """Only for a VM that must run: an agent address (e["address"] when given)."""
    expected = None
    if e["power_state"] == "running":
        expected = e["address"] if e["address"] is not None else "an IPv4 address from the guest agent"
    if f.addresses:
        actual = ", ".join(f.addresses)
    elif "msg" in f.vm_net:
        actual = "no answer from the guest agent: {}".format(f.vm_net["msg"])
    elif f.exists:
        actual = "no address (the VM is not running)"
    else:
        actual = f.absent
    passed = bool(f.addresses) and (e["address"] is None or e["address"] in f.addresses)
    return ("address", expected, actual, passed)


def smbios_seed(f, e):
    """The serial names the seed URL; the report never shows the URL itself, only a placeholder or its host."""
    given = bool(e["seed_url"])
    named = "ds={};s={}".format(e["datasource"], SEED_PLACEHOLDER)
    serial = f.serial()
    wanted = "ds={};s={}".format(e["datasource"], e["seed_url"])
    if not f.exists:
        actual = f.absent
    elif not serial:
        actual = "no SMBIOS serial"
    elif serial == wanted:
        actual = named
    else:
        actual = SERIAL_URL_PATH.sub(r"\1/<another path>", serial)
    return ("smbios_seed", named if given else None, actual, f.exists and serial == wanted)


def firewall_groups(f, e):
    wanted = e["firewall_groups"]
    expected = None if wanted is None else sorted(set(wanted))
    unreadable = f.firewall_unreadable()
    if not f.exists:
        actual = f.absent
    elif unreadable is not None:
        actual = f"unreadable: {unreadable}"
    else:
        actual = f.groups()
    passed = f.exists and unreadable is None and f.groups() == sorted(set(wanted or []))
    return ("firewall_groups", expected, actual, passed)
