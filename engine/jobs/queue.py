"""How the API side hands work to the workers: the job rows are the queue; this only tells the workers to look.

The API process records intents through the store and never runs a playbook (nor imports ansible-runner). Workers
on this machine are woken by the bell; a worker elsewhere (a shared PostgreSQL store) finds the job within a second
on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from engine.jobs import bell
from engine.models import Job
from engine.store import Store


class JobQueue(Protocol):
    def notify(self) -> None:
        """Jobs were queued."""

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a pending job at once; a running one stops with its run once every job in it asked."""


class StoreQueue:
    """The embedded queue: the store's job table, and the bell of this machine's workers."""

    def __init__(self, store: Store, bell_dir: Path) -> None:
        self._store = store
        self._bell_dir = bell_dir

    def notify(self) -> None:
        bell.ring(self._bell_dir, bell.JOBS)

    def cancel(self, job_id: str) -> Job | None:
        job, stop_run = self._store.cancel(job_id)
        if stop_run is not None:
            bell.ring(self._bell_dir, bell.JOBS)
        return job
