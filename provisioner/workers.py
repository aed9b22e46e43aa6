"""The worker processes `provisioner run` keeps next to the API (PROVISIONER_WORKERS): started with it, started
again when one dies, stopped with it."""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess

from provisioner.worker_spec import WorkerSpec

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)
STOP_TIMEOUT_S = 20


class WorkerProcesses:
    def __init__(self, spec: WorkerSpec, count: int) -> None:
        self._spec = spec
        self._count = count
        # spawn, not fork: the API process has threads (uvicorn, the intake, the cluster view) a fork would copy.
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[BaseProcess | None] = [None] * count
        self._deaths = [0] * count
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p is not None and p.pid is not None and p.is_alive()]

    def start(self) -> None:
        if not self._count:
            return
        # Every worker is started by this one thread, which lives until they are all gone: a child's parent-death
        # signal follows the thread that started it, not the process.
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """SIGINT to every worker (runs interrupted, their jobs handed back), SIGKILL to one that does not end."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT_S + 10)

    def _supervise(self) -> None:
        for slot in range(self._count):
            self._spawn(slot)
        restart_at: dict[int, float] = {}
        while not self._stopping.wait(0.5):
            for slot, process in enumerate(self._processes):
                if process is None or process.is_alive():
                    continue
                if slot not in restart_at:
                    backoff = RESTART_BACKOFF_S[min(self._deaths[slot], len(RESTART_BACKOFF_S) - 1)]
                    self._deaths[slot] += 1
                    log.error(
                        "worker process %d (pid %s) exited with %s; starting another in %d s",
                        slot,
                        process.pid,
                        process.exitcode,
                        backoff,
                    )
                    restart_at[slot] = time.monotonic() + backoff
                elif time.monotonic() >= restart_at[slot]:
                    del restart_at[slot]
                    self._spawn(slot)
        self._stop_all()

    def _stop_all(self) -> None:
        running = [p for p in self._processes if p is not None and p.is_alive()]
        for process in running:
            _signal(process, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker process %s did not stop; killing it", process.pid)
                process.kill()
                process.join(5)

    def _spawn(self, slot: int) -> None:
        process = self._context.Process(
            target=_serve, args=(self._spec, os.getpid()), name=f"provisioner-worker-{slot}", daemon=False
        )
        process.start()
        self._processes[slot] = process
        log.info("worker process %d started (pid %s)", slot, process.pid)


def _serve(spec: WorkerSpec, parent_pid: int) -> None:
    """The worker process's entry. Its code (the executor, ansible-runner) is loaded here, in the child, by name:
    the API process never imports it (the import-linter contract "The API process never loads ansible-runner")."""
    importlib.import_module("provisioner.worker").serve(spec, parent_pid)


def _signal(process: BaseProcess, signum: int) -> None:
    if process.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
