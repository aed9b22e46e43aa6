# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The VM's security groups: firewall rules of type group (action = the group's name), enabled."""

from functools import partial

from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_plan import Change


def input_problems(p):
    both = sorted(set(p["firewall_groups"]) & set(p["firewall_groups_absent"]))
    if both:
        return ["groups both wanted and unwanted: {}".format(", ".join(both))]
    return []


def is_asked(p):
    return bool(p["firewall_groups"] or p["firewall_groups_absent"])


def cluster_problems(p, groups):
    """Groups to add that the cluster does not have (groups: the names /cluster/firewall/groups lists)."""
    unknown = sorted(set(p["firewall_groups"]) - set(groups))
    if not unknown:
        return []
    return [
        "unknown firewall security group{} {} (the cluster has: {})".format(
            "s" if len(unknown) > 1 else "", ", ".join(unknown), ", ".join(sorted(groups)) or "none"
        )
    ]


def plan(rules, wanted, unwanted):
    """(groups to add, positions to enable, positions to delete highest first) for the VM's rules."""
    group_rules = [r for r in rules if r.get("type") == "group"]
    add, enable = [], []
    for group in dict.fromkeys(wanted):
        mine = [r for r in group_rules if r.get("action") == group]
        if not mine:
            add.append(group)
        elif not any(int(r.get("enable") or 0) == 1 for r in mine):
            enable.append(int(mine[0]["pos"]))
    delete = sorted((int(r["pos"]) for r in group_rules if r.get("action") in set(unwanted)), reverse=True)
    return add, enable, delete


def changes(vm, p, rules):
    """Enable, then delete, then add: in that order the positions read from rules stay right."""
    add, enable, delete = plan(rules, p["firewall_groups"], p["firewall_groups_absent"])
    planned = []
    if enable:
        label = "enable the firewall group rules at {}".format(", ".join(map(str, enable)))
        planned.append(Change(label, partial(enable_rules, vm, enable)))
    if delete:
        label = "delete the firewall group rules at {}".format(", ".join(map(str, delete)))
        planned.append(Change(label, partial(delete_rules, vm, delete)))
    if add:
        planned.append(Change("add firewall groups " + ", ".join(add), partial(add_groups, vm, add)))
    return planned


def enable_rules(vm, positions):
    rules = vm.qemu.firewall.rules
    for pos in positions:
        vm.request(f"enabling firewall rule {pos}", lambda pos=pos: rules(pos).put(enable=1))


def delete_rules(vm, positions):
    """positions highest first: deleting a rule shifts only those after it."""
    rules = vm.qemu.firewall.rules
    for pos in positions:
        vm.request(f"deleting firewall rule {pos}", lambda pos=pos: rules(pos).delete())


def add_groups(vm, groups):
    """PVE inserts a new rule first: added in reverse, the groups end up in the order given."""
    rules = vm.qemu.firewall.rules
    for group in reversed(groups):
        vm.request(
            f"adding firewall group {group}", lambda group=group: rules.post(type="group", action=group, enable=1)
        )
