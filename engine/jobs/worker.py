"""A worker: the process that claims jobs and runs their playbooks (`provisioner worker`), and its heartbeat.

Each worker has a row in the store (`workers`) and beats every `heartbeat_s`. A worker whose beat is older than
`lost_after_s`, or whose process is gone from this host, is lost: any worker that notices hands its RUNNING jobs
back (the playbooks are idempotent; the kinds that must not run twice fail instead) after killing what it left
running on this host. A worker that was itself declared lost (a long pause, a cut link) stops its runs when its
next beat finds its row gone, and joins again.

The store is the queue: a worker claims with a compare-and-set (`Store.claim`), so jobs of one VM never overlap and
run in order whichever worker takes them. The bell (engine/jobs/bell.py) wakes it when a job is queued or canceled;
without a ring it still looks every second.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from engine.jobs import bell
from engine.jobs.executor import Executor
from engine.jobs.processes import kill_run, kill_run_processes, scrub_run_inputs
from engine.models import utcnow
from engine.store import Store, aware

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    bell_dir: Path
    runs_dir: Path
    heartbeat_s: float = 5.0
    lost_after_s: float = 30.0


class QueueSide(Protocol):
    """What hands runs to this worker when a queue claims them (engine/jobs/procrastinate_worker.py); without one,
    the executor claims for itself."""

    def start(self) -> None: ...
    def stop_taking(self) -> None: ...
    def close(self) -> None: ...
    def wake(self) -> None:
        """Jobs may be ready: queued, handed back, or next for a VM whose run ended."""


class Worker:
    def __init__(
        self,
        store: Store,
        executor_for: Callable[[str, Callable[[], None]], Executor],
        config: WorkerConfig,
        host: str | None = None,
        queue_for: Callable[[Worker], QueueSide] | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self._store = store
        self._config = config
        self.executor = executor_for(self.id, self._after_run)
        self._stop = threading.Event()
        self._draining = False
        self._listener: bell.Listener | None = None
        self._thread: threading.Thread | None = None
        self._queue = queue_for(self) if queue_for is not None else None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._config.runs_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
        self._store.register_worker(self.id, self.host, self.pid, self.executor.slots)
        log.info("worker %s (%s, pid %d) joined", self.id, self.host, self.pid)
        self.recover_lost()
        self._listener = bell.Listener(self._config.bell_dir, bell.JOBS)
        self.executor.start()
        self._thread = threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True)
        self._thread.start()
        if self._queue is not None:
            self._queue.start()

    def drain(self, timeout_s: float, interrupted: threading.Event | None = None) -> bool:
        """Claim nothing new and wait up to timeout_s (or until interrupted) for the runs going on to end; True if
        they did."""
        self._draining = True
        if self._queue is not None:
            self._queue.stop_taking()
        self.executor.drain()
        self._beat()
        deadline = time.monotonic() + timeout_s
        interrupted = interrupted or threading.Event()
        while self.executor.active_runs and time.monotonic() < deadline and not interrupted.wait(0.2):
            pass
        return not self.executor.active_runs

    def stop(self) -> None:
        """Stop now: runs still going are interrupted and their jobs handed back, then the worker leaves."""
        self._stop.set()
        if self._queue is not None:
            self._queue.stop_taking()
        if self._listener is not None:
            self._listener.interrupt()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.executor.stop(wait=True)
        if self._store.recover(self.id, "its worker stopped"):
            self._jobs_ready()
        if self._queue is not None:
            self._queue.close()
        if self._listener is not None:
            self._listener.close()
        log.info("worker %s left", self.id)

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        assert self._listener is not None
        next_beat = time.monotonic() + self._config.heartbeat_s
        while not self._stop.is_set():
            rung = self._listener.wait(min(1.0, max(0.0, next_beat - time.monotonic())))
            if self._stop.is_set():
                return
            try:
                if rung:
                    self.executor.notify()
                    self.executor.stop_canceled()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self._config.heartbeat_s
                    self._beat()
                    self.executor.stop_canceled()
                    self.recover_lost()
            except Exception:
                log.exception("worker %s: heartbeat failed; retrying", self.id)

    def _beat(self) -> None:
        if self._store.heartbeat(self.id, self._draining):
            return
        log.error(
            "worker %s was declared lost (no heartbeat for %s s): its jobs went to other workers; stopping its runs",
            self.id,
            self._config.lost_after_s,
        )
        self.executor.stop_all()
        self._store.register_worker(self.id, self.host, self.pid, self.executor.slots)

    def _after_run(self) -> None:
        bell.ring(self._config.bell_dir, bell.RUNS)  # the API refreshes its view of the cluster
        self._jobs_ready()  # the VM's next job may be ready, for any worker

    def _jobs_ready(self) -> None:
        bell.ring(self._config.bell_dir, bell.JOBS)
        if self._queue is not None:
            self._queue.wake()

    # ------------------------------------------------------------------ lost workers

    def recover_lost(self) -> int:
        """Hand back the jobs of every lost worker (and of a service from before workers); how many."""
        cutoff = utcnow() - timedelta(seconds=self._config.lost_after_s)
        handed_back = 0
        for worker in self._store.workers():
            if worker.id == self.id:
                continue
            gone_here = worker.host == self.host and not _alive(worker.pid)
            if gone_here or aware(worker.heartbeat_at) < cutoff:
                why = "its process is gone" if gone_here else f"no heartbeat for {self._config.lost_after_s:g} s"
                handed_back += self._recover(worker.id, worker.host, f"its worker was lost ({why})")
        if self._store.orphaned():
            handed_back += self._recover(None, self.host, "the service restarted")
        if handed_back:
            self._jobs_ready()
        return handed_back

    def recover_run(self, run_id: str, reason: str) -> int:
        """Hand back the jobs of one run its worker stopped running (a queue found it stalled), after killing what it
        left running if that was on this machine."""
        kill_run_processes(run_id)
        scrub_run_inputs(self._config.runs_dir, [run_id])
        return self._store.recover_run(run_id, reason)

    def _recover(self, worker_id: str | None, host: str, reason: str) -> int:
        runs = self._store.stale_runs(worker_id)
        if host == self.host:  # a process group of another machine is not ours to kill
            for run in runs:
                kill_run(run)
            scrub_run_inputs(self._config.runs_dir, [run.run_id for run in runs])
        count = self._store.recover(worker_id, reason)
        if count:
            log.warning("%d job(s) of worker %s handed back: %s", count, worker_id or "(none)", reason)
        return count


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
