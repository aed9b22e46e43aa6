"""The job executor of one worker process: pending jobs → batches → one playbook run per batch, on a few threads.

Jobs are rows (persisted before they run). A dispatcher thread groups pending jobs of the same kind for
distinct instances into a batch (waiting `batch_window` for more to arrive, up to `max_batch`), claims them for
this worker and hands the batch to a thread, which runs the playbook once with one inventory host per VM. Jobs of
one instance never overlap and run in the order they were accepted, whichever worker runs them. What a lost
worker was running goes back to pending (engine/jobs/worker.py): every playbook is idempotent, so re-running one
is safe.
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
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from engine.jobs.kinds import KINDS, Context, host_variables
from engine.jobs.outcome import ADDRESS, EventRecord, HostOutcome, RunOutcome
from engine.jobs.processes import kill_run
from engine.jobs.redact import Redactor
from engine.jobs.runner import PlaybookRun
from engine.metrics import BATCH_SIZE, JOBS_FINISHED, RUN_SECONDS
from engine.models import Job, JobEvent, JobKind, JobState, utcnow
from engine.store import Finished, Store, aware

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 30
OVERDUE_GRACE_S = 60  # past the job timeout, which ansible-runner enforces itself, before the dispatcher steps in


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
    lost_after_s: float = 30.0  # a worker silent this long has no free runs to share a burst with


class Executor:
    def __init__(
        self,
        store: Store,
        config: ExecutorConfig,
        env: dict[str, str],
        secrets: list[str],
        context: Context,
        after_run: Callable[[], None],
        worker_id: str | None = None,
        claims: bool = True,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._config = config
        self._env = env
        self._secrets = secrets
        self._context = context  # what the job kinds' variables are made of (engine/jobs/kinds.py)
        self._after_run = after_run
        # False: a queue claims, and hands the runs to `run_claimed` (engine/jobs/procrastinate_queue.py)
        self._claims = claims
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._draining = threading.Event()
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

    def drain(self) -> None:
        """Claim nothing more; the runs going on finish (`active_runs` says how many are left)."""
        self._draining.set()

    def notify(self) -> None:
        self._wake.set()

    # --- cancel

    def stop_canceled(self) -> None:
        """Stop the runs of this worker every job of which asked to be canceled (`Store.cancel`, from any process)."""
        with self._cancels_lock:
            running = dict(self._cancels)
        for run_id in self._store.runs_to_stop(list(running)):
            log.info("run %s: every job in it was canceled; stopping it", run_id)
            running[run_id].set()

    def stop_all(self) -> None:
        """Stop every run of this worker now (its jobs were handed to others: this worker was declared lost)."""
        with self._cancels_lock:
            for cancel in self._cancels.values():
                cancel.set()

    @property
    def slots(self) -> int:
        """The playbook runs this executor runs at once."""
        return self._config.max_parallel_runs

    @property
    def active_runs(self) -> int:
        with self._active_lock:
            return self._active_runs

    # --- dispatching

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._give_up_overdue_runs()
                while self._claims and self._may_claim() and self._dispatch_once():
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
        """The next batch, sized to spread the ready jobs of its kind over the idle runs of every live worker (this
        worker's idle_runs when it claims for no worker)."""
        run_id = str(uuid.uuid4())
        lost_before = utcnow() - timedelta(seconds=self._config.lost_after_s)

        def choose(ready: list[Job], now: datetime, free_slots: int | None) -> list[Job]:
            batch, wait_s = self._choose(ready, now, free_slots or idle_runs)
            if wait_s is not None:
                self._schedule_wake(wait_s)
            return batch

        claimed = self._store.claim(choose, run_id, self._worker_id, lost_before)
        return (run_id, claimed) if claimed else None

    def claim_for_queue(self, hand_over: Callable[..., None]) -> tuple[list[str], float | None]:
        """Claim a batch for each free run of every live worker, handing each to the queue in its claim's transaction
        (`hand_over(connection, run_id=…)`); the runs claimed, and in how many seconds jobs waiting for their batch
        window are due (None: none wait)."""
        lost_before = utcnow() - timedelta(seconds=self._config.lost_after_s)
        runs: list[str] = []
        wait: list[float] = []

        def choose(ready: list[Job], now: datetime, free_slots: int | None) -> list[Job]:
            if not free_slots:
                return []
            batch, wait_s = self._choose(ready, now, free_slots)
            wait.extend([wait_s] if wait_s is not None else [])
            return batch

        while self._may_claim():
            run_id = str(uuid.uuid4())
            if not self._store.claim(choose, run_id, self._worker_id, lost_before, partial(hand_over, run_id=run_id)):
                break
            runs.append(run_id)
        return runs, (min(wait) if wait else None)

    def _may_claim(self) -> bool:
        return not self._stop.is_set() and not self._draining.is_set()

    def _choose(self, ready: list[Job], now: datetime, idle_runs: int) -> tuple[list[Job], float | None]:
        """The batch to claim among the ready jobs, or none and how long until the oldest's batch window closes."""
        if not ready:
            return [], None
        kind = ready[0].kind
        candidates = [job for job in ready if job.kind == kind]
        oldest = aware(candidates[0].created_at)
        window = timedelta(seconds=self._config.batch_window_s)
        if len(candidates) < self._config.max_batch and now - oldest < window:
            return [], self._config.batch_window_s - (now - oldest).total_seconds()
        # Spread the ready jobs over the idle runs: each run's controller process is single-threaded, so one
        # run of 50 VMs keeps one core busy where two runs of 25 use both, and two workers share a burst.
        return candidates[: min(self._config.max_batch, -(-len(candidates) // idle_runs))], None

    def _schedule_wake(self, delay_s: float) -> None:
        timer = threading.Timer(max(0.01, delay_s), self._wake.set)
        timer.daemon = True
        timer.start()

    def _give_up_overdue_runs(self) -> None:
        """Runs still RUNNING well past the job timeout (their worker is stuck): killed, their jobs failed."""
        deadline = utcnow() - timedelta(seconds=self._config.job_timeout_s + OVERDUE_GRACE_S)
        for run in self._store.overdue_runs(deadline, self._worker_id):
            log.error("run %s outlived its timeout; killing it and failing its jobs", run.run_id)
            with self._cancels_lock:
                event = self._cancels.get(run.run_id)
            if event is not None:
                event.set()
            kill_run(run)
            self._store.fail_run(run.run_id, f"the playbook run did not end within {self._config.job_timeout_s} s")

    # --- running

    def run_claimed(self, run_id: str, cancel: threading.Event) -> bool:
        """Run a batch a queue claimed (`claim_for_queue`) and handed to this worker; cancel stops it. False if it
        must not run: it was recovered or finished meanwhile, or every job in it was canceled (they end so)."""
        job_ids = self._store.start_run(run_id, self._worker_id or "")
        if not job_ids:
            return False
        with self._active_lock:
            self._active_runs += 1
        if self._store.runs_to_stop([run_id]):
            cancel.set()  # the run still starts, and ends its jobs CANCELED at once
        self._run_batch(run_id, job_ids, cancel)
        return True

    def _run_batch(self, run_id: str, job_ids: list[str], cancel: threading.Event | None = None) -> None:
        lower_priority(self._config.nice)
        try:
            self._execute(run_id, job_ids, cancel or threading.Event())
        except Exception:
            log.exception("run %s crashed", run_id)
            self._finish_all(
                run_id, job_ids, RunOutcome("error", None, {}, "internal error while running the playbook")
            )
        finally:
            with self._cancels_lock:
                self._cancels.pop(run_id, None)
            with self._active_lock:
                self._active_runs -= 1
            self._prune_runs()
            self._after_run()
            self._wake.set()

    def _execute(self, run_id: str, job_ids: list[str], cancel: threading.Event) -> None:
        hostvars: dict[str, dict[str, Any]] = {}
        secrets = list(self._secrets)
        host_jobs: dict[str, str] = {}
        kind = None
        for job, instance in self._store.run_jobs(job_ids):
            kind = JobKind(job.kind)
            hostvars[host_name(instance.id)] = host_variables(self._context, job, instance)
            host_jobs[host_name(instance.id)] = job.id
            secrets.append(self._context.seeds.token(instance))
        if kind is None:
            return
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
            on_process=lambda pgid: self._store.record_run_process(run_id, pgid),
            nice=self._config.nice,
        )
        BATCH_SIZE.observe(len(hostvars))
        with RUN_SECONDS.labels(KINDS[kind].playbook).time():
            outcome = run.execute(cancel)
        log.info("run %s finished: %s", run_id, outcome.status)
        for host, result in outcome.hosts.items():
            if not result.ok:
                step = repr(result.failed_task) if result.failed_task else "before its first task"
                log.warning("run %s: %s failed at %s: %s", run_id, host, step, result.error)
        self._finish_all(run_id, list(host_jobs.values()), outcome)

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
        self._store.add_events(rows)

    def _finish_all(self, run_id: str, job_ids: list[str], outcome: RunOutcome) -> None:
        finished = [self._finished(job, outcome) for job, _instance in self._store.run_jobs(job_ids)]
        for job in self._store.finish(run_id, finished, RETRY_BACKOFF_S):
            if JobState(job.state).finished:
                JOBS_FINISHED.labels(job.kind, job.state).inc()

    def _finished(self, job: Job, outcome: RunOutcome) -> Finished:
        host = outcome.hosts.get(host_name(job.instance_id)) or HostOutcome(
            ok=False, error=outcome.explanation or "the playbook did not run"
        )
        result: dict[str, Any] = {
            "run_status": outcome.status,
            "rc": outcome.rc,
            "changed": host.changed,
            **({"address": host.facts[ADDRESS]} if ADDRESS in host.facts else {}),
            **({"failed_task": host.failed_task} if host.failed_task and not host.ok else {}),
        }
        if host.ok:
            state = JobState.SUCCESSFUL
        elif outcome.status == "canceled":
            state = JobState.CANCELED
        else:
            state = JobState.FAILED if outcome.status != "error" else JobState.ERROR
        # Canceled by our own shutdown, not by a user: run it again at the next start.
        interrupted = self._stop.is_set() and outcome.status == "canceled" and not job.cancel_requested
        extra_attempt = host.unfinished and KINDS[JobKind(job.kind)].rerun_after_crash
        return Finished(job.id, host, result, state, interrupted, extra_attempt)

    def _prune_runs(self) -> None:
        """Keep the newest `keep_runs` finished runs' artifacts; never a run that is still going (here, or on another
        worker sharing the directory)."""
        with self._cancels_lock:
            active = set(self._cancels) | self._store.running_run_ids()
        runs = sorted(
            (p for p in self._config.runs_dir.iterdir() if p.is_dir() and p.name not in active),
            key=lambda p: p.stat().st_mtime,
        )
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
