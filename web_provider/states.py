"""Mapping our lifecycle, open jobs and Proxmox's view onto VISA's 12 instance states.

VISA's enum is strict and case-sensitive (one bad value fails a whole list), so only these are ever
sent. PARTIALLY_ACTIVE and DELETING exist in VISA but must never come from a provider.
"""

from __future__ import annotations

import enum

from engine.models import JobKind, Lifecycle
from engine.service import InstanceView


class VisaState(enum.StrEnum):
    UNKNOWN = "UNKNOWN"
    BUILDING = "BUILDING"
    STARTING = "STARTING"
    ACTIVE = "ACTIVE"
    ACTIVE_MIGRATING = "ACTIVE_MIGRATING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    REBOOTING = "REBOOTING"
    MIGRATING = "MIGRATING"
    UNAVAILABLE = "UNAVAILABLE"
    ERROR = "ERROR"
    DELETED = "DELETED"


TRANSITIONS = {
    JobKind.START: VisaState.STARTING,
    JobKind.SHUTDOWN: VisaState.STOPPING,
    JobKind.STOP: VisaState.STOPPING,
    JobKind.REBOOT: VisaState.REBOOTING,
}
POWER_STATES = {"stopped": VisaState.STOPPED, "paused": VisaState.STOPPED, "suspended": VisaState.STOPPED}


def visa_state(view: InstanceView) -> VisaState:
    lifecycle = Lifecycle(view.instance.lifecycle)
    if lifecycle is Lifecycle.BUILDING:
        return VisaState.BUILDING
    if lifecycle is Lifecycle.ERROR:
        return VisaState.ERROR
    if lifecycle is Lifecycle.DELETING and view.delete_overdue:
        return VisaState.ERROR  # never DELETED while the VM is still there and its deletes keep failing
    if lifecycle in (Lifecycle.DELETING, Lifecycle.DELETED):
        return VisaState.DELETED
    if view.active_job in TRANSITIONS:
        return TRANSITIONS[JobKind(view.active_job)]
    if not view.snapshot_ok or view.vm_status is None:
        return VisaState.UNKNOWN
    if view.vm_lock == "migrate":
        return VisaState.ACTIVE_MIGRATING if view.vm_status == "running" else VisaState.MIGRATING
    if view.vm_status == "running":
        if view.seed_overdue:
            return VisaState.ERROR
        return VisaState.ACTIVE if view.instance.address else VisaState.STARTING
    return POWER_STATES.get(view.vm_status, VisaState.UNKNOWN)
