# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The clone of a template to the VMID, when no guest holds it yet."""

from functools import partial

from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_plan import Change


def input_problems(p):
    if p["template_vmid"] is not None and p["template_vmid"] == p["vmid"]:
        return ["template_vmid {} is the VM itself".format(p["template_vmid"])]
    return []


def cluster_problems(p, guests):
    """Why the template cannot be cloned to the VM (guests: /cluster/resources entries by VMID)."""
    if p["template_vmid"] is None:
        return ["VM {} does not exist".format(p["vmid"])]
    if p["template_node"] is None or p["name"] is None:
        return ["VM {} does not exist; name and template_node are needed to clone it".format(p["vmid"])]
    template = guests.get(p["template_vmid"])
    if template is None:
        return ["template {} does not exist".format(p["template_vmid"])]
    if template.get("type") != "qemu" or not template.get("template"):
        return ["guest {} ({}) is not a QEMU template".format(p["template_vmid"], template.get("name", "unnamed"))]
    if template.get("node") != p["template_node"]:
        return [
            "template {} is on node {}, not on {}".format(
                p["template_vmid"], template.get("node", "?"), p["template_node"]
            )
        ]
    return []


def changes(vm, p):
    label = "clone template {} on {} to {}".format(p["template_vmid"], p["template_node"], p["node"])
    return [Change(label, partial(clone, vm, p))]


def clone(vm, p):
    args = {"newid": p["vmid"], "name": p["name"], "full": 1 if p["full_clone"] else 0}
    if p["node"] != p["template_node"]:
        args["target"] = p["node"]
    if p["full_clone"] and p["storage"]:
        args["storage"] = p["storage"]
    template = vm.api.nodes(p["template_node"]).qemu(p["template_vmid"])
    vm.client.run_task(
        "VM {}: cloning template {}".format(p["vmid"], p["template_vmid"]),
        p["template_node"],
        lambda: template.clone.post(**args),
        vm.timeout,
    )


def template_config(vm, p):
    """What the clone's config will be, for check mode: the template's (PVE copies it), with the VM's name."""
    template = vm.api.nodes(p["template_node"]).qemu(p["template_vmid"])
    config = vm.request("reading the template's configuration", lambda: template.config.get())
    config = {k: v for k, v in config.items() if k not in ("template", "digest")}
    config["name"] = p["name"]
    return config


def template_firewall_rules(vm, p):
    """What the clone's firewall rules will be, for check mode: the template's (PVE copies its firewall config)."""
    template = vm.api.nodes(p["template_node"]).qemu(p["template_vmid"])
    return vm.request("reading the template's firewall rules", lambda: template.firewall.rules.get())
