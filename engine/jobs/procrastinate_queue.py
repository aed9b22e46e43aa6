"""The procrastinate queue (PostgreSQL): how runs reach workers on any number of machines.

The job table stays the truth (engine/store.py); procrastinate hands runs to workers, reaches a run wherever it runs
to abort it, and notices a worker that stopped beating. Its tasks (their bodies: engine/jobs/procrastinate_worker.py):

- `provisioner.dispatch` (queue "control", lock "dispatch": one at a time): whichever worker takes it claims a batch
  for each free run slot of every live worker (`Store.claim`, which keeps one VM's jobs in order and never two at
  once) and, in the claim's own transaction, defers one `provisioner.run` per batch. The API defers it when it
  records jobs, a worker when a run ends, the tick every few seconds; at most one waits at a time (its queueing lock).
- `provisioner.run` (queue "runs"; lock and queueing lock: the run's id, so a run handed over twice runs once): the
  first worker with a free run slot takes it and runs its playbook. A cancel of every job in it aborts it wherever
  it runs.
- `provisioner.tick` (periodic, every TICK_S, once across all workers): a dispatch (retries whose backoff ended),
  and the runs procrastinate found stalled (their worker stopped beating): their jobs are handed back (run again, or
  failed for the kinds that must not run twice).

This module is what the API process needs: it never imports the executor (nor ansible-runner).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from procrastinate import App, SyncPsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import Status
from sqlalchemy.engine import make_url

from engine.models import Job
from engine.store import Store

log = logging.getLogger(__name__)

CONTROL_QUEUE = "control"
RUNS_QUEUE = "runs"
DISPATCH = "provisioner.dispatch"
RUN = "provisioner.run"
TICK = "provisioner.tick"
TICK_S = 5


def conninfo(database_url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL (`postgresql+psycopg://…`)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError("the procrastinate queue needs PostgreSQL")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def sync_app(database_url: str) -> App:
    """An App that defers and cancels from plain threads (the API process); open it before use."""
    return App(connector=SyncPsycopgConnector(conninfo=conninfo(database_url), min_size=1, max_size=4))


def run_lock(run_id: str) -> str:
    return f"run:{run_id}"


def defer_dispatch(app: App) -> None:
    """Ask a worker to claim and hand out what is ready; nothing if a dispatch already waits (it will see it)."""
    with contextlib.suppress(AlreadyEnqueued):
        app.configure_task(DISPATCH, queue=CONTROL_QUEUE, lock="dispatch", queueing_lock="dispatch").defer()


def defer_run(app: App, connection: Any, run_id: str) -> None:
    """Hand a claimed run to the workers, in the claim's transaction (connection). The run's id is its queueing lock
    (handed over again while it waits: refused) and its lock (handed over again while it runs: waits, then finds its
    jobs finished and does nothing): a run runs once."""
    lock = run_lock(run_id)
    app.configure_task(RUN, queue=RUNS_QUEUE, lock=lock, queueing_lock=lock, connection=connection).defer(run_id=run_id)


def abort_run(app: App, run_id: str) -> bool:
    """Stop a run wherever it runs (its worker's runner cancel callback); True if it was running. A run not started
    yet needs nothing: it ends its canceled jobs when it starts."""
    for job in app.job_manager.list_jobs(task=RUN, queueing_lock=run_lock(run_id), status=Status.DOING.value):
        assert job.id is not None
        if app.job_manager.cancel_job_by_id(job.id, abort=True):
            return True
    return False


class ProcrastinateQueue:
    """The API side of the procrastinate queue (engine/jobs/queue.py's JobQueue)."""

    def __init__(self, store: Store, app: App) -> None:
        self._store = store
        self._app = app

    def notify(self) -> None:
        defer_dispatch(self._app)

    def cancel(self, job_id: str) -> Job | None:
        job, stop_run = self._store.cancel(job_id)
        if stop_run is not None and abort_run(self._app, stop_run):
            log.info("run %s: every job in it was canceled; its worker was asked to stop it", stop_run)
        return job
