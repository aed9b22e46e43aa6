"""What a playbook run reports, as plain data: the store and the job kinds read it without importing ansible-runner
(the API process never loads it; only workers run playbooks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The key of a VM module result that carries the guest's address (when the call waited for one).
ADDRESS = "address"
# Facts a role sets as its result (set_fact) that the job kinds read (docs/contract.md §2).
KEYS_APPLIED = "guest_ssh_keys_applied"
REPORTED_FACTS = (KEYS_APPLIED,)


@dataclass
class EventRecord:
    host: str | None
    counter: int
    event: str
    task: str | None
    changed: bool
    stdout: str
    data: dict[str, Any]


@dataclass
class HostOutcome:
    ok: bool = True
    seen: bool = False
    error: str | None = None
    failed_task: str | None = None
    failed_action: str | None = None  # the module or action of the failed task
    unfinished: bool = False  # the run ended (killed, crashed) before this VM's play did
    changed: bool = False
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunOutcome:
    status: str  # successful | failed | canceled | timeout | error
    rc: int | None
    hosts: dict[str, HostOutcome]
    explanation: str | None = None
