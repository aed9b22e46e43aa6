"""Mapping our lifecycle, open jobs and Proxmox's view onto VISA's 12 instance states.

VISA's enum is strict and case-sensitive (one bad value fails a whole list), so only these are ever
sent. PARTIALLY_ACTIVE and DELETING exist in VISA but must never come from a provider.
"""

from __future__ import annotations

import enum

from engine.phases import Phase, phase
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


NAMES = {
    Phase.BUILDING: VisaState.BUILDING,
    Phase.FAILED: VisaState.ERROR,
    Phase.DELETE_STUCK: VisaState.ERROR,  # never DELETED while the VM is still there and its deletes keep failing
    Phase.DELETING: VisaState.DELETED,
    Phase.STARTING: VisaState.STARTING,
    Phase.STOPPING: VisaState.STOPPING,
    Phase.REBOOTING: VisaState.REBOOTING,
    Phase.UNKNOWN: VisaState.UNKNOWN,
    Phase.MIGRATING_RUNNING: VisaState.ACTIVE_MIGRATING,
    Phase.MIGRATING_STOPPED: VisaState.MIGRATING,
    Phase.SEED_OVERDUE: VisaState.ERROR,
    Phase.RUNNING: VisaState.ACTIVE,
    Phase.BOOTING: VisaState.STARTING,
    Phase.STOPPED: VisaState.STOPPED,
    Phase.PAUSED: VisaState.STOPPED,
    Phase.OTHER: VisaState.UNKNOWN,
}


def visa_state(view: InstanceView) -> VisaState:
    return NAMES[phase(view)]
