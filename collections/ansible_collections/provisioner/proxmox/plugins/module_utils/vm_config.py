# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one config update the spec and the seed share: only the keys that differ, guarded by the config digest."""

from ansible_collections.provisioner.proxmox.plugins.module_utils import vm_seed, vm_spec
from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_plan import Change


def update(p, config, serial):
    """(updates, deletes): the config keys to set and to delete so the VM matches p."""
    updates = vm_spec.updates(p, config) if vm_spec.is_asked(p) else {}
    deletes = []
    if vm_seed.is_asked(p):
        seed_updates, deletes = vm_seed.changes(p, config, serial)
        updates.update(seed_updates)
    return updates, deletes


def changes(vm, p, config, serial):
    """At most one PUT of the VM's config. Its label names the keys, never their values (smbios1 is secret)."""
    updates, deletes = update(p, config, serial)
    if not (updates or deletes):
        return []
    label = []
    if updates:
        label.append("set " + ", ".join(sorted(updates)))
    if deletes:
        label.append("delete the cloud-init drive{} {}".format("s" if len(deletes) > 1 else "", ", ".join(deletes)))
    body = dict(updates)
    if deletes:
        body["delete"] = ",".join(deletes)
    if config.get("digest"):  # a concurrent change fails the update instead of being overwritten
        body["digest"] = config["digest"]
    return [
        Change("; ".join(label), lambda: vm.request("updating its configuration", lambda: vm.qemu.config.put(**body)))
    ]
