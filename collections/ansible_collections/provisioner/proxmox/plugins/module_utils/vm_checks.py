# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every check before the first change: the options on their own, then against the cluster.

Each part checks its own options; this adds what concerns the VM as a whole (the VMID, its node, the guest
that holds it) and reports every problem at once.
"""

from ansible_collections.provisioner.proxmox.plugins.module_utils import (
    vm_address,
    vm_clone,
    vm_disk,
    vm_firewall,
    vm_seed,
    vm_spec,
)
from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_api import VmProblems

# In the order their problems are reported.
PARTS_WITH_INPUT_CHECKS = (vm_spec, vm_disk, vm_clone, vm_seed, vm_firewall, vm_address)


def input_problems(p):
    """Everything wrong with the parameters on their own."""
    problems = []
    if not 100 <= p["vmid"] <= 999999999:
        problems.append("vmid must be between 100 and 999999999 (got {})".format(p["vmid"]))
    for part in PARTS_WITH_INPUT_CHECKS:
        problems.extend(part.input_problems(p))
    return problems


def cluster_problems(p, guests, nodes, groups):
    """Everything wrong with the parameters against the cluster: nodes, the VMID's owner, the template, groups."""
    problems = []
    node = nodes.get(p["node"])
    if node is None:
        problems.append(
            "node {!r} is not a node of the cluster (nodes: {})".format(p["node"], ", ".join(sorted(nodes)))
        )
    elif node.get("status") != "online":
        problems.append("node {} is not online (status {})".format(p["node"], node.get("status", "unknown")))
    existing = guests.get(p["vmid"])
    if existing is not None:
        if is_foreign(p, existing):
            problems.append(foreign_guest(p, existing))
    elif p["state"] != "absent":
        problems.extend(vm_clone.cluster_problems(p, guests))
    problems.extend(vm_firewall.cluster_problems(p, groups))
    return problems


def is_foreign(p, guest):
    return (
        guest.get("type") != "qemu"
        or bool(guest.get("template"))
        or (p["name"] is not None and guest.get("name") != p["name"])
        or guest.get("node") != p["node"]
    )


def foreign_guest(p, guest):
    """Why the guest holding the VMID is not the VM asked for (and is left alone)."""
    held = "VMID {} is {} {!r}{} on node {}".format(
        p["vmid"],
        guest.get("type", "a guest"),
        guest.get("name", "(unnamed)"),
        " (a template)" if guest.get("template") else "",
        guest.get("node", "?"),
    )
    wanted = "VM" + (f" {p['name']!r}" if p["name"] is not None else "") + f" on node {p['node']}"
    action = "delete" if p["state"] == "absent" else "adopt"
    return f"{held}, not {wanted}; refusing to {action} it"


def preflight(vm, p):
    """Check everything, and set the node of an existing VM (p["node"], vm.node); the guest holding the VMID or None.

    Raises VmProblems before any change. With state=absent and no node given, an absent VM is fine.
    """
    problems = input_problems(p)
    if problems:
        raise VmProblems(problems)
    api = vm.api
    guests = {g["vmid"]: g for g in vm.request("listing the guests", lambda: api.cluster.resources.get(type="vm"))}
    nodes = {n["node"]: n for n in vm.request("listing the nodes", lambda: api.nodes.get())}
    groups = []
    if p["firewall_groups"]:
        groups = [
            g["group"] for g in vm.request("listing the security groups", lambda: api.cluster.firewall.groups.get())
        ]
    existing = guests.get(p["vmid"])
    if p["node"] is None and existing is not None:
        p["node"] = existing.get("node")
    elif p["node"] is None and p["state"] == "absent":
        return None
    elif p["node"] is None:
        raise VmProblems(["VM {} does not exist; node is needed to clone it".format(p["vmid"])])
    vm.node = p["node"]
    problems = cluster_problems(p, guests, nodes, groups)
    if problems:
        raise VmProblems(problems)
    return existing


def config_problems(p, config):
    """What in the VM's config stops the asked parts (a VMID taken over, no boot disk, a drive in the way)."""
    problems = []
    for part in (vm_spec, vm_disk, vm_seed):
        if part.is_asked(p):
            problems.extend(part.config_problems(p, config))
    return problems
