"""The simulated cluster's contents: nodes, storages, cloud-init templates, security groups, adoptable VMs."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

from simulator.cluster import ClusterSimulator
from simulator.identity import vmid_mac
from simulator.properties import GIB, MIB, TIB, format_size

T = TypeVar("T")

NODES = ("pve1", "pve2")
CEPH_STORAGE = "ceph-vm"


@dataclass(frozen=True)
class TemplateSpec:
    vmid: int
    name: str
    node: str
    disk_bytes: int
    cloud_init_drive: bool = False  # a Proxmox cloud-init drive (ide2), as many sites' templates carry
    image: str | None = None  # the real guest image its clones boot (simulator.guests.images), None: emulated only


TEMPLATES = (
    TemplateSpec(9000, "debian-12-cloud", "pve1", 3 * GIB, image="debian-12"),
    TemplateSpec(9001, "ubuntu-24.04-cloud", "pve2", 3584 * MIB, cloud_init_drive=True),
)
# With real guests: the templates whose images are built from Debian's packages (cloud-init 22.4 and 25.1).
REAL_GUEST_TEMPLATES = (
    TemplateSpec(9000, "debian-12-cloud", "pve1", 3 * GIB, image="debian-12"),
    TemplateSpec(9002, "debian-13-cloud", "pve2", 3 * GIB, cloud_init_drive=True, image="debian-13"),
)
SECURITY_GROUPS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "default": ("Baseline for every VM: ping", [{"type": "in", "action": "ACCEPT", "macro": "Ping", "enable": 1}]),
    "ssh": ("SSH from anywhere", [{"type": "in", "action": "ACCEPT", "macro": "SSH", "enable": 1}]),
    "web": (
        "HTTP and HTTPS from anywhere",
        [
            {"type": "in", "action": "ACCEPT", "macro": "HTTPS", "enable": 1},
            {"type": "in", "action": "ACCEPT", "macro": "HTTP", "enable": 1},
        ],
    ),
}


def seed_cluster(sim: ClusterSimulator) -> None:
    """Nodes pve1/pve2, storages local/local-lvm/ceph-vm, the cloud-init templates and the security groups.

    Calling it again adds only what is missing.
    """
    for node in NODES:
        if node not in sim.nodes:
            sim.add_node(node)
    if CEPH_STORAGE not in sim.storages:
        sim.add_ceph_storage(CEPH_STORAGE, pool="vm")
        sim.storages[CEPH_STORAGE]["total"] = 4 * TIB
    sim.storages["local-lvm"].setdefault("total", 800 * GIB)
    for spec in REAL_GUEST_TEMPLATES if sim.guests is not None else TEMPLATES:
        if sim.vm(spec.vmid) is None:
            _add_template(sim, spec)
        if sim.guests is not None and spec.image:
            sim.guests.images[spec.vmid] = spec.image
    groups = sim.firewall_config("cluster")
    for name, (comment, rules) in SECURITY_GROUPS.items():
        if name not in groups["groups"]:
            groups["groups"][name] = [dict(rule) for rule in rules]
            groups["group_comments"][name] = comment


def _add_template(sim: ClusterSimulator, spec: TemplateSpec) -> None:
    """A cloud-init template as `qm importdisk` + `qm template` leave it: its base volume on the shared storage."""
    volname = f"base-{spec.vmid}-disk-0"
    sim.storages[CEPH_STORAGE].setdefault("volumes", {})[volname] = {
        "content": "images",
        "format": "raw",
        "size": spec.disk_bytes,
        "vmid": spec.vmid,
        "ctime": int(time.time()),
    }
    mac = vmid_mac(spec.vmid).upper()
    sim.add_vm(
        spec.vmid,
        spec.name,
        node=spec.node,
        template=True,
        config={
            "scsi0": f"{CEPH_STORAGE}:{volname},size={format_size(spec.disk_bytes)}",
            "scsihw": "virtio-scsi-pci",
            "boot": "order=scsi0",
            "net0": f"virtio={mac},bridge=vmbr0,firewall=1",
            "agent": "enabled=1",
            "serial0": "socket",
            "vga": "serial0",
            "ostype": "l26",
            "cores": 1,
            "memory": 1024,
            "template": 1,
            "smbios1": f"uuid={uuid.uuid4()}",
            **({"ide2": f"{CEPH_STORAGE}:base-{spec.vmid}-cloudinit,media=cdrom"} if spec.cloud_init_drive else {}),
        },
    )


def add_running_vms(sim: ClusterSimulator, count: int, first_vmid: int, prefix: str) -> list[int]:
    """`count` running VMs named `<prefix>-<vmid>` and tagged `provisioner`, as if created long ago (their
    disks are linked clones of template 9000); a provider that lost its database adopts them."""
    made: list[int] = []
    vmid = first_vmid
    while len(made) < count:
        if sim.vm(vmid) is None:
            vm = sim.add_vm(
                vmid,
                f"{prefix}-{vmid}",
                node=NODES[vmid % len(NODES)],
                status="running",
                config={
                    "scsi0": f"{CEPH_STORAGE}:base-9000-disk-0/vm-{vmid}-disk-0,size=20G",
                    "net0": f"virtio={vmid_mac(vmid).upper()},bridge=vmbr0,firewall=1",
                    "agent": "enabled=1",
                    "cores": 2,
                    "memory": 4096,
                    "ostype": "l26",
                    "tags": "provisioner",
                },
            )
            vm.started_at = time.time() - 3600
            made.append(vmid)
        vmid += 1
    return made
