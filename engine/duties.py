"""Duties one process does for all (the reconciler, the advertiser): with several API processes on one store, the
one holding the duty's lease does it, and another takes over within a lease when its holder dies."""

from __future__ import annotations

import logging
import os
import socket
import uuid

from engine.store import Store

log = logging.getLogger(__name__)


def holder_id() -> str:
    """This process, as a duty's holder: machine, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DutyLease:
    def __init__(self, store: Store, name: str, holder: str, lease_s: float) -> None:
        self._store = store
        self.name = name
        self._holder = holder
        self._lease_s = lease_s
        self._held = False

    def held(self) -> bool:
        """Take or renew the lease; True while this process holds the duty (False when the store cannot say)."""
        try:
            held = self._store.hold_duty(self.name, self._holder, self._lease_s)
        except Exception:
            log.exception("could not renew the %s duty", self.name)
            held = False
        if held != self._held:
            log.info("%s the %s duty", "holding" if held else "not holding", self.name)
        self._held = held
        return held

    def release(self) -> None:
        if self._held:
            self._store.release_duty(self.name, self._holder)
            self._held = False
