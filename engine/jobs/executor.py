"""The job executor: pending jobs → batches → one playbook run per batch, on a small worker pool.

Jobs are rows (persisted before they run). A dispatcher thread groups pending jobs of the same kind for
distinct instances into a batch (waiting `batch_window` for more to arrive, up to `max_batch`), marks
them running and hands the batch to a worker, which runs the playbook once with one inventory host per
VM. Jobs of one instance never overlap and run in the order they were accepted. After a crash, running
jobs go back to pending: every playbook is idempotent, so re-running one is safe.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine.db import Database
from engine.jobs.kinds import KINDS, apply_outcome, host_variables
from engine.jobs.redact import Redactor
from engine.jobs.runner import ADDRESS, EventRecord, HostOutcome, PlaybookRun, RunOutcome
from engine.metrics import BATCH_SIZE, JOBS_FINISHED, RUN_SECONDS
from engine.models import Instance, Job, JobEvent, JobKind, JobState, utcnow
from engine.settings import Settings

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 30


def host_name(instance_id: int) -> str:
    return f"vm-{instance_id}"


@dataclass(frozen=True)
class ExecutorConfig:
    ansible_dir: Path
    runs_dir: Path
    max_batch: int
    max_parallel_runs: int
    batch_window_s: float
    job_timeout_s: int
    keep_runs: int
    nice: int = 10  # playbook processes yield the CPU to the API and the seed server


class Executor:
    def __init__(
        self,
        db: Database,
        config: ExecutorConfig,
        env: dict[str, str],
        secrets: list[str],
        settings: Settings,
        after_run: Callable[[], None],
    ) -> None:
        self._db = db
        self._config = config
        self._env = env
        self._secrets = secrets
        self._settings = settings  # what the job kinds' variables are made of (engine/jobs/kinds.py)
        self._after_run = after_run
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(config.max_parallel_runs, thread_name_prefix="ansible-run")
        self._active_lock = threading.Lock()
        self._active_runs = 0  # runs started and not finished; only the dispatcher thread starts them
        self._cancels: dict[str, threading.Event] = {}
        self._cancels_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.runs_started = 0

    # --- lifecycle

    def start(self) -> None:
        self._config.runs_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="job-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        with self._cancels_lock:
            for cancel in self._cancels.values():
                cancel.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=wait)

    def notify(self) -> None:
        self._wake.set()

    def recover(self) -> int:
        """Jobs left running by a crash go back to pending (or fail, for the non-idempotent ones)."""
        with self._db.session() as session:
            stale = list(session.scalars(select(Job).where(Job.state == JobState.RUNNING)))
            for job in stale:
                job.run_id = None
                if KINDS[JobKind(job.kind)].rerun_after_crash:
                    job.state = JobState.PENDING
                else:
                    job.state = JobState.FAILED
                    job.error = "interrupted by a service restart; not repeated"
                    job.finished_at = utcnow()
            return len(stale)

    # --- cancel

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a pending job at once; a running one stops with its run once every job in it asked."""
        with self._db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            if job.state == JobState.PENDING:
                job.state = JobState.CANCELED
                job.finished_at = utcnow()
                job.error = "canceled before it ran"
                instance = session.get(Instance, job.instance_id)
                if instance is not None:
                    apply_outcome(job, instance, HostOutcome(ok=False, error=job.error))
            elif job.state == JobState.RUNNING:
                job.cancel_requested = True
                session.flush()
                pending = session.scalar(
                    select(Job.id).where(Job.run_id == job.run_id, Job.cancel_requested.is_(False)).limit(1)
                )
                if pending is None:
                    with self._cancels_lock:
                        event = self._cancels.get(job.run_id or "")
                    if event is not None:
                        event.set()
            session.expunge(job)
            return job

    # --- dispatching

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                while not self._stop.is_set() and self._dispatch_once():
                    pass
            except Exception:
                log.exception("job dispatcher failed; retrying")

    def _dispatch_once(self) -> bool:
        """Start one batch if a run is idle and jobs are ready; True if it started one."""
        with self._active_lock:
            idle = self._config.max_parallel_runs - self._active_runs
        if idle < 1:
            return False
        batch = self._claim_batch(idle)
        if not batch:
            return False
        with self._active_lock:
            self._active_runs += 1
        self._pool.submit(self._run_batch, *batch)
        return True

    def _claim_batch(self, idle_runs: int = 1) -> tuple[str, list[str]] | None:
        """The next batch, sized to spread the ready jobs of its kind over idle_runs runs."""
        now = utcnow()
        with self._db.session() as session:
            busy = set(session.scalars(select(Job.instance_id).where(Job.state == JobState.RUNNING)))
            pending = session.scalars(select(Job).where(Job.state == JobState.PENDING).order_by(Job.created_at))
            seen: set[int] = set()
            ready: list[Job] = []
            for job in pending:
                first_for_instance = job.instance_id not in seen
                seen.add(job.instance_id)
                if not first_for_instance or job.instance_id in busy:
                    continue
                if job.not_before is not None and _aware(job.not_before) > now:
                    continue
                ready.append(job)
            if not ready:
                return None
            kind = ready[0].kind
            candidates = [job for job in ready if job.kind == kind]
            oldest = _aware(candidates[0].created_at)
            window = timedelta(seconds=self._config.batch_window_s)
            if len(candidates) < self._config.max_batch and now - oldest < window:
                self._schedule_wake(self._config.batch_window_s - (now - oldest).total_seconds())
                return None
            # Spread the ready jobs over the idle runs: each run's controller process is single-threaded, so one
            # run of 50 VMs keeps one core busy where two runs of 25 use both.
            batch = candidates[: min(self._config.max_batch, -(-len(candidates) // idle_runs))]
            run_id = str(uuid.uuid4())
            ids = [job.id for job in batch]
            session.execute(
                update(Job)
                .where(Job.id.in_(ids), Job.state == JobState.PENDING)
                .values(state=JobState.RUNNING, run_id=run_id, started_at=now, attempts=Job.attempts + 1)
            )
            return run_id, ids

    def _schedule_wake(self, delay_s: float) -> None:
        timer = threading.Timer(max(0.01, delay_s), self._wake.set)
        timer.daemon = True
        timer.start()

    # --- running

    def _run_batch(self, run_id: str, job_ids: list[str]) -> None:
        lower_priority(self._config.nice)
        try:
            self._execute(run_id, job_ids)
        except Exception:
            log.exception("run %s crashed", run_id)
            self._finish_all(job_ids, RunOutcome("error", None, {}, "internal error while running the playbook"))
        finally:
            with self._cancels_lock:
                self._cancels.pop(run_id, None)
            with self._active_lock:
                self._active_runs -= 1
            self._prune_runs()
            self._after_run()
            self._wake.set()

    def _execute(self, run_id: str, job_ids: list[str]) -> None:
        with self._db.session() as session:
            jobs = list(session.scalars(select(Job).where(Job.id.in_(job_ids))))
            kind = JobKind(jobs[0].kind)
            hostvars: dict[str, dict[str, Any]] = {}
            secrets = list(self._secrets)
            for job in jobs:
                instance = session.get(Instance, job.instance_id)
                assert instance is not None
                hostvars[host_name(instance.id)] = host_variables(self._settings, job, instance)
                secrets.append(instance.seed_token)
            host_jobs = {host_name(job.instance_id): job.id for job in jobs}
        cancel = threading.Event()
        with self._cancels_lock:
            self._cancels[run_id] = cancel
        self.runs_started += 1
        log.info("run %s: %s for %d VM(s)", run_id, kind.value, len(hostvars))
        run = PlaybookRun(
            ansible_dir=self._config.ansible_dir,
            runs_dir=self._config.runs_dir,
            run_id=run_id,
            playbook=KINDS[kind].playbook,
            hostvars=hostvars,
            env=self._env,
            redactor=Redactor(secrets),
            timeout_s=self._config.job_timeout_s,
            sink=lambda records: self._store_events(host_jobs, records),
        )
        BATCH_SIZE.observe(len(hostvars))
        with RUN_SECONDS.labels(KINDS[kind].playbook).time():
            outcome = run.execute(cancel)
        log.info("run %s finished: %s", run_id, outcome.status)
        self._finish_all(job_ids, outcome)

    def _store_events(self, host_jobs: dict[str, str], records: list[EventRecord]) -> None:
        rows = []
        for record in records:
            targets = [host_jobs[record.host]] if record.host in host_jobs else list(host_jobs.values())
            rows += [
                JobEvent(
                    job_id=job_id,
                    counter=record.counter,
                    event=record.event,
                    task=record.task,
                    changed=record.changed,
                    stdout=record.stdout,
                    data=record.data,
                )
                for job_id in targets
            ]
        with self._db.session() as session:
            session.add_all(rows)

    def _finish_all(self, job_ids: list[str], outcome: RunOutcome) -> None:
        with self._db.session() as session:
            for job in session.scalars(select(Job).where(Job.id.in_(job_ids))):
                instance = session.get(Instance, job.instance_id)
                host = outcome.hosts.get(host_name(job.instance_id)) or HostOutcome(
                    ok=False, error=outcome.explanation or "the playbook did not run"
                )
                self._finish(session, job, instance, host, outcome)

    def _finish(
        self, session: Session, job: Job, instance: Instance | None, host: HostOutcome, outcome: RunOutcome
    ) -> None:
        if self._stop.is_set() and outcome.status == "canceled" and not job.cancel_requested:
            # Interrupted by our own shutdown, not by a user: run it again at the next start.
            job.state, job.run_id, job.started_at = JobState.PENDING, None, None
            job.attempts = max(0, job.attempts - 1)
            return
        job.finished_at = utcnow()
        job.result = {
            "run_status": outcome.status,
            "rc": outcome.rc,
            "changed": host.changed,
            **({"address": host.facts[ADDRESS]} if ADDRESS in host.facts else {}),
        }
        if host.ok:
            job.state = JobState.SUCCESSFUL
            job.error = None
        elif outcome.status == "canceled":
            job.state = JobState.CANCELED
            job.error = host.error
        elif job.attempts < job.max_attempts:
            job.state = JobState.PENDING
            job.run_id = None
            job.error = host.error
            job.not_before = utcnow() + timedelta(seconds=RETRY_BACKOFF_S * job.attempts)
            job.finished_at = None
            return
        else:
            job.state = JobState.FAILED if outcome.status != "error" else JobState.ERROR
            job.error = host.error
        if host.failed_task:
            job.result["failed_task"] = host.failed_task
        JOBS_FINISHED.labels(job.kind, job.state).inc()
        if instance is not None:
            apply_outcome(job, instance, host)

    def _prune_runs(self) -> None:
        runs = sorted((p for p in self._config.runs_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in runs[: max(0, len(runs) - self._config.keep_runs)]:
            shutil.rmtree(old, ignore_errors=True)


def lower_priority(increment: int) -> None:
    """Lower this thread's CPU priority; the processes it spawns (ansible-playbook, modules) inherit it."""
    if increment <= 0:
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, max(current, increment)))
    except OSError:
        log.warning("could not lower the priority of the job worker thread")


def _aware(moment: Any) -> Any:
    """SQLite returns naive datetimes for timezone-aware columns; they were stored as UTC."""
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
