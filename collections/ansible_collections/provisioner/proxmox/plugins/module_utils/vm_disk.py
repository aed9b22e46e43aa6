# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The boot disk's size: it grows to disk_gb and never shrinks."""

import re

from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_plan import Change

DISK_KEY = re.compile(r"^(ide|sata|scsi|virtio)[0-9]+$")
DISK_SIZE = re.compile(r"(?:^|,)size=([0-9]+(?:\.[0-9]+)?)([KMGT]?)(?:,|$)")
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
GIB = 1 << 30


def input_problems(p):
    problems = []
    if p["disk_gb"] is not None and p["disk_gb"] < 1:
        problems.append("disk_gb must be at least 1 (got {})".format(p["disk_gb"]))
    if not DISK_KEY.match(p["disk"]):
        problems.append("disk {!r} is not a disk key such as scsi0".format(p["disk"]))
    return problems


def is_asked(p):
    return p["disk_gb"] is not None


def config_problems(p, config):
    if p["disk"] not in config:
        disks = sorted(k for k in config if DISK_KEY.match(k))
        return ["its boot disk {} is not in its config (disks: {})".format(p["disk"], ", ".join(disks))]
    if disk_bytes(config[p["disk"]]) < 0:
        return ["no size= in the value of its boot disk {}".format(p["disk"])]
    return []


def changes(vm, p, config):
    """A resize when the boot disk is smaller than disk_gb GiB."""
    have, want = disk_bytes(config.get(p["disk"])), p["disk_gb"] * GIB
    if want <= have:
        return []
    label = "grow {} from {} to {}G".format(p["disk"], size_label(have), p["disk_gb"])
    return [Change(label, lambda: grow(vm, p["disk"], p["disk_gb"]))]


def grow(vm, disk, size_gb):
    upid = vm.request(f"growing {disk}", lambda: vm.qemu.resize.put(disk=disk, size=f"{size_gb}G"))
    if isinstance(upid, str) and upid.startswith("UPID:"):  # PVE 8 runs the resize as a task
        vm.client.wait_task(f"VM {vm.vmid}: growing {disk}", vm.node, upid, vm.timeout)


def disk_bytes(value):
    """The size= of a drive value in bytes, or -1 when it has none."""
    match = DISK_SIZE.search(str(value or ""))
    if not match:
        return -1
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def size_label(size):
    for unit in ("T", "G", "M", "K"):
        if size % SIZE_UNITS[unit] == 0:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return f"{size} bytes"
