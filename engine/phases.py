"""Where an instance is, from our lifecycle, its open job and Proxmox's view: one answer that each API names in its
own words (web_provider/states.py for VISA's enum, api/vms.py for /v1's, api/golem/app.py for Golem's).

The order of the checks is the answer's meaning: a build is a build, a failed create or a delete that keeps failing
is a failure, a delete is a delete, then a job under way says what is happening, and only then does Proxmox's view
(a VM that runs, is stopped, migrates, or never took its seed) decide.
"""

from __future__ import annotations

import enum

from engine.models import JobKind, Lifecycle
from engine.service import InstanceView


class Phase(enum.Enum):
    BUILDING = enum.auto()  # its create has not finished
    FAILED = enum.auto()  # its create failed (fault_* say why)
    DELETE_STUCK = enum.auto()  # being deleted for too long, and its VM is still there
    DELETING = enum.auto()  # being deleted (or deleted)
    STARTING = enum.auto()  # a start job is under way
    STOPPING = enum.auto()  # a shutdown or stop job is under way
    REBOOTING = enum.auto()  # a reboot job is under way
    UNKNOWN = enum.auto()  # Proxmox's view is stale, or has no such VM
    MIGRATING_RUNNING = enum.auto()
    MIGRATING_STOPPED = enum.auto()
    SEED_OVERDUE = enum.auto()  # runs with its address, but the guest never phoned home: nobody can log in
    RUNNING = enum.auto()  # runs, with its address
    BOOTING = enum.auto()  # runs, no address yet
    STOPPED = enum.auto()
    PAUSED = enum.auto()  # paused or suspended in Proxmox
    OTHER = enum.auto()  # a power status Proxmox may add


JOB_PHASES = {
    JobKind.START: Phase.STARTING,
    JobKind.SHUTDOWN: Phase.STOPPING,
    JobKind.STOP: Phase.STOPPING,
    JobKind.REBOOT: Phase.REBOOTING,
}


def phase(view: InstanceView) -> Phase:
    lifecycle = Lifecycle(view.instance.lifecycle)
    if lifecycle is Lifecycle.BUILDING:
        return Phase.BUILDING
    if lifecycle is Lifecycle.ERROR:
        return Phase.FAILED
    if lifecycle in (Lifecycle.DELETING, Lifecycle.DELETED):
        return Phase.DELETE_STUCK if lifecycle is Lifecycle.DELETING and view.delete_overdue else Phase.DELETING
    if view.active_job in JOB_PHASES:
        return JOB_PHASES[JobKind(view.active_job)]
    if not view.snapshot_ok or view.vm_status is None:
        return Phase.UNKNOWN
    if view.vm_lock == "migrate":
        return Phase.MIGRATING_RUNNING if view.vm_status == "running" else Phase.MIGRATING_STOPPED
    if view.vm_status == "running":
        if view.seed_overdue:
            return Phase.SEED_OVERDUE
        return Phase.RUNNING if view.instance.address else Phase.BOOTING
    if view.vm_status == "stopped":
        return Phase.STOPPED
    return Phase.PAUSED if view.vm_status in ("paused", "suspended") else Phase.OTHER
