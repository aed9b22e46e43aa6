# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""state=absent: stop the VM if it runs, then delete it with its disks. An absent VM needs nothing."""

from functools import partial

from ansible_collections.provisioner.proxmox.plugins.module_utils import vm_power
from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_plan import Change


def changes(vm, p, guest):
    """guest: the VM's /cluster/resources entry, None when there is no VM."""
    if guest is None:
        return []
    planned = []
    if guest.get("status") != "stopped":
        planned.append(vm_power.stop_change(vm, p))
    planned.append(Change("delete with its disks", partial(delete, vm)))
    return planned


def delete(vm):
    vm.task("deleting it", lambda: vm.qemu.delete(purge=1, **{"destroy-unreferenced-disks": 1}))
