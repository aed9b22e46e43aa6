"""A worker's procrastinate side (engine/jobs/procrastinate_queue.py says what each task does): two procrastinate
workers on an event loop of their own thread, one for runs (as many at once as the executor's run slots), one for
the control tasks (dispatch and the tick, one at a time).

Its procrastinate heartbeat and the worker's own (engine/jobs/worker.py) are one: if the procrastinate loop ends by
itself, the worker process stops (`on_failure`), so procrastinate never takes for stalled a run this process is still
running, and the workers table never lists a worker that takes no run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from procrastinate import App, JobContext, PsycopgConnector
from procrastinate import worker as procrastinate_worker
from procrastinate.exceptions import JobAborted
from procrastinate.jobs import DeleteJobCondition, Status

from engine.jobs.executor import Executor
from engine.jobs.procrastinate_queue import (
    CONTROL_QUEUE,
    DISPATCH,
    RUN,
    RUNS_QUEUE,
    TICK,
    TICK_S,
    conninfo,
    defer_dispatch,
    defer_run,
    sync_app,
)

log = logging.getLogger(__name__)

ABORT_POLL_S = 0.2  # how often a run looks whether it was aborted (procrastinate sets it on the abort's NOTIFY)


@dataclass(frozen=True)
class QueueConfig:
    database_url: str
    heartbeat_s: float
    lost_after_s: float
    max_dispatch_wait_s: float = 10.0  # a dispatch waits for batch windows this long at most; then the tick does


class QueueWorker:
    def __init__(
        self,
        config: QueueConfig,
        executor: Executor,
        recover_run: Callable[[str, str], int],
        on_failure: Callable[[], None],
    ) -> None:
        self._config = config
        self._executor = executor
        self._recover_run = recover_run  # hands back a stalled run's jobs, killing what it left on this host
        self._on_failure = on_failure
        self._deferrer = sync_app(config.database_url)
        self._app = App(connector=PsycopgConnector(conninfo=conninfo(config.database_url), min_size=1, max_size=4))
        self._register_tasks()
        options: dict[str, Any] = {
            "install_signal_handlers": False,
            "update_heartbeat_interval": config.heartbeat_s,
            "stalled_worker_timeout": config.lost_after_s,
            "delete_jobs": DeleteJobCondition.SUCCESSFUL,
        }
        self._runs = procrastinate_worker.Worker(
            self._app, queues=[RUNS_QUEUE], name="runs", concurrency=executor.slots, **options
        )
        self._control = procrastinate_worker.Worker(
            self._app, queues=[CONTROL_QUEUE], name="control", concurrency=1, **options
        )
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._deferrer.open()
        self._thread = threading.Thread(target=self._serve, name="procrastinate", daemon=True)
        self._thread.start()
        self.wake()  # what waited while no worker was there

    def stop_taking(self) -> None:
        """Take no new run nor control task; the runs going on go on (the executor stops or drains them)."""
        self._stopping.set()
        self._runs.stop()  # type: ignore[no-untyped-call]
        self._control.stop()  # type: ignore[no-untyped-call]

    def close(self, timeout_s: float = 30.0) -> None:
        self.stop_taking()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._deferrer.close()

    def wake(self) -> None:
        """Jobs may be ready (queued, handed back, next for a VM whose run ended): a worker is to dispatch them."""
        defer_dispatch(self._deferrer)

    def _serve(self) -> None:
        async def both() -> None:
            async with self._app.open_async():
                await asyncio.gather(self._runs.run(), self._control.run())  # type: ignore[no-untyped-call]

        try:
            asyncio.run(both())
        except Exception:
            log.exception("the procrastinate workers failed")
        if not self._stopping.is_set():
            log.error("the procrastinate workers stopped by themselves; stopping this worker")
            self._on_failure()

    # ------------------------------------------------------------------ tasks

    def _register_tasks(self) -> None:
        self._app.task(name=DISPATCH, queue=CONTROL_QUEUE)(self._dispatch)
        self._app.task(name=RUN, queue=RUNS_QUEUE, pass_context=True)(self._run)
        tick = self._app.task(name=TICK, queue=CONTROL_QUEUE)(self._tick)
        self._app.periodic(cron=f"* * * * * */{TICK_S}", periodic_id="tick")(tick)

    def _dispatch(self) -> None:
        deadline = time.monotonic() + self._config.max_dispatch_wait_s
        while True:
            runs, wait_s = self._executor.claim_for_queue(partial(defer_run, self._deferrer))
            if runs:
                log.info("dispatched %d run(s)", len(runs))
            if wait_s is None or time.monotonic() + wait_s > deadline or self._stopping.is_set():
                return
            time.sleep(wait_s)  # the batch window of jobs just recorded: more may come to share their run

    def _run(self, context: JobContext, run_id: str) -> None:
        cancel = threading.Event()
        ended = threading.Event()

        def watch_abort() -> None:
            while not ended.wait(ABORT_POLL_S):
                if context.should_abort():
                    log.info("run %s aborted (its jobs were canceled); stopping it", run_id)
                    cancel.set()
                    return

        watcher = threading.Thread(target=watch_abort, name=f"abort-{run_id[:8]}", daemon=True)
        watcher.start()
        try:
            ran = self._executor.run_claimed(run_id, cancel)
        finally:
            ended.set()
        if not ran:
            log.info("run %s was recovered or finished before it started; nothing to do", run_id)
        if context.should_abort():
            raise JobAborted

    async def _tick(self, timestamp: int) -> None:
        del timestamp  # procrastinate's: when this tick was due
        manager = self._app.job_manager
        stalled = await manager.get_stalled_jobs(task_name=RUN, seconds_since_heartbeat=self._config.lost_after_s)
        for job in stalled:
            run_id = str(job.task_kwargs["run_id"])
            reason = f"its worker was lost (no heartbeat for {self._config.lost_after_s:g} s)"
            handed_back = await asyncio.to_thread(self._recover_run, run_id, reason)
            assert job.id is not None
            await manager.finish_job_by_id_async(job.id, Status.FAILED, delete_job=False)
            log.warning("run %s stalled: %d job(s) handed back", run_id, handed_back)
        await asyncio.to_thread(defer_dispatch, self._deferrer)
