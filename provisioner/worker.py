"""A worker process: what `provisioner worker` runs on a machine of its own, and what `provisioner run` starts
PROVISIONER_WORKERS of next to the API.

SIGTERM drains (claims nothing new, lets the runs going on finish for up to PROVISIONER_WORKER_DRAIN seconds, then
interrupts the rest and hands their jobs back); SIGINT, or a second signal, stops at once (runs interrupted, jobs
handed back to other workers; every playbook is idempotent).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable

from engine.db import Database
from engine.jobs.executor import Executor, ExecutorConfig
from engine.jobs.kinds import Context
from engine.jobs.procrastinate_worker import QueueConfig, QueueWorker
from engine.jobs.worker import QueueSide, Worker, WorkerConfig
from engine.seeds import SeedTokens
from engine.store import Store
from provisioner.worker_spec import WorkerSpec

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def build_worker(spec: WorkerSpec, db: Database) -> Worker:
    settings = spec.settings
    store = Store(db)
    seeds = SeedTokens.from_file(settings.seed_key_path)
    config = ExecutorConfig(
        ansible_dir=settings.ansible_dir,
        runs_dir=settings.runs_dir,
        max_batch=settings.max_batch,
        max_parallel_runs=settings.max_parallel_runs,
        batch_window_s=settings.batch_window_ms / 1000,
        job_timeout_s=settings.job_timeout_s,
        keep_runs=settings.keep_runs,
        nice=settings.job_nice,
        lost_after_s=settings.worker_lost_after_s,
    )

    def executor_for(worker_id: str, after_run: Callable[[], None]) -> Executor:
        return Executor(
            store,
            config,
            env=spec.ansible_env,
            secrets=spec.secrets,
            context=Context(settings, seeds),
            after_run=after_run,
            worker_id=worker_id,
            claims=settings.queue_backend == "embedded",
        )

    def queue_for(worker: Worker) -> QueueSide:
        config = QueueConfig(settings.db_url, settings.worker_heartbeat_s, settings.worker_lost_after_s)
        return QueueWorker(config, worker.executor, worker.recover_run, on_failure=_stop_now)

    return Worker(
        store,
        executor_for,
        WorkerConfig(
            bell_dir=settings.bell_dir,
            runs_dir=settings.runs_dir,
            heartbeat_s=settings.worker_heartbeat_s,
            lost_after_s=settings.worker_lost_after_s,
        ),
        queue_for=queue_for if settings.queue_backend == "procrastinate" else None,
    )


def _stop_now() -> None:
    """Stop this worker at once, as SIGINT does: its runs are interrupted and their jobs handed back."""
    os.kill(os.getpid(), signal.SIGINT)


def serve(spec: WorkerSpec, parent_pid: int | None = None) -> None:
    """Run one worker until a signal; with parent_pid, also until that process (the service) dies."""
    logging.basicConfig(level=spec.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_requested = threading.Event()
    stop_now = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop_requested.is_set() or signum == signal.SIGINT:
            stop_now.set()
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    if spec.settings.job_nice > 0:
        # Its threads (a run's events, the store writes) yield to the API process, which shares its session's
        # scheduling group when `provisioner run` started it; the playbook processes get their own groups lowered.
        os.nice(spec.settings.job_nice)
    db = Database(spec.settings.db_url)
    try:
        worker = build_worker(spec, db)
        worker.start()
        stop_requested.wait()
        if not stop_now.is_set() and spec.settings.worker_drain_s > 0:
            log.info("worker %s draining (up to %g s)", worker.id, spec.settings.worker_drain_s)
            worker.drain(spec.settings.worker_drain_s, stop_now)
        worker.stop()
    finally:
        db.dispose()


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the service that started this worker dies: a worker never outlives it. What its runs leave
    running is killed, and their jobs handed back, by the next worker on this machine (engine/jobs/worker.py)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.warning("cannot ask to be stopped with the service (prctl); the worker may outlive it")
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
