# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The VM's power state: start, stop (ACPI shutdown, or status/stop when forced), reboot (or reset)."""

import time
from functools import partial

from ansible_collections.provisioner.proxmox.plugins.module_utils.pve import PveFailure
from ansible_collections.provisioner.proxmox.plugins.module_utils.vm_plan import Change

POWER_STATES = ("started", "stopped", "restarted")


def is_asked(p):
    return p["state"] in POWER_STATES


def changes(vm, p, status):
    """(the changes, the power state after them) for a VM whose power state is status."""
    state, force = p["state"], p["force"]
    if state == "started" and status != "running":
        return [Change("start", partial(start, vm, p))], "running"
    if state == "stopped" and status != "stopped":
        return [stop_change(vm, p)], "stopped"
    if state == "restarted" and status == "running":
        return [Change("reset" if force else "reboot", partial(reboot, vm, p))], "running"
    if state == "restarted":
        return [Change("start", partial(start, vm, p))], "running"
    return [], status


def stop_change(vm, p):
    return Change("stop" if p["force"] else "shut down", partial(stop, vm, p))


def start(vm, p):
    """Start the VM, again up to start_retries times after a failed start task (lock errors are retried anyway)."""
    attempts = p["start_retries"] + 1
    for attempt in range(1, attempts + 1):
        try:
            vm.task("starting it", lambda: vm.qemu.status.start.post())
            return
        except PveFailure:
            if attempt == attempts:
                raise
            time.sleep(p["start_retry_delay"])


def stop(vm, p):
    status, stop_timeout = vm.qemu.status, p["stop_timeout"]
    if p["force"]:
        vm.task("stopping it", lambda: status.stop.post())
    else:  # PVE's own shutdown timeout ends the task with an error; the wait allows a little more than that.
        vm.task("shutting it down", lambda: status.shutdown.post(timeout=stop_timeout), stop_timeout + 30)


def reboot(vm, p):
    status = vm.qemu.status
    if p["force"]:
        vm.task("resetting it", lambda: status.reset.post())
    else:
        vm.task("rebooting it", lambda: status.reboot.post(timeout=p["stop_timeout"]))
