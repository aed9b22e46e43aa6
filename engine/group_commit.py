"""Group commit: one thread stores, in one transaction, everything submitted while it was busy.

A caller's outcome is only given once the transaction its item was part of has committed (or failed).
Under a burst, the cost of a transaction is paid once per group instead of once per item, and no two
transactions compete for the database's write lock. A lone item waits for nothing but its own commit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
Entry = tuple[Item, Future[Result]]


class GroupCommitFailed(RuntimeError):
    """The group an item was part of failed in an unexpected way (or the committer is stopped)."""


class GroupCommitter(Generic[Item, Result]):
    """Runs `commit(items)` on its own thread for every group of items queued meanwhile.

    `commit` stores all of its items in one transaction, or none, and returns one outcome per item, in
    order: a result, or the exception that item's caller gets. If it raises instead, every caller of the
    group gets GroupCommitFailed.
    """

    def __init__(
        self, commit: Callable[[list[Item]], Sequence[Result | Exception]], name: str, max_group: int = 200
    ) -> None:
        self._commit = commit
        self._name = name
        self._max_group = max_group
        self._queue: queue.SimpleQueue[Entry[Item, Result] | None] = queue.SimpleQueue()
        self._closing = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Store what is queued already, then end the thread; later submissions are refused."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, item: Item) -> Future[Result]:
        """Queue an item; the future is settled once its group is committed (or has failed)."""
        future: Future[Result] = Future()
        with self._closing:
            if self._closed:
                raise GroupCommitFailed(f"{self._name} is stopped")
            self._queue.put((item, future))
        return future

    async def commit(self, item: Item) -> Result:
        """Queue an item and wait for its outcome without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(item))

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while group[-1] is not None and len(group) < self._max_group:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries = [entry for entry in group if entry is not None]
            if entries:
                self._settle(entries)
            if group[-1] is None:
                return

    def _settle(self, entries: list[Entry[Item, Result]]) -> None:
        # A caller that gave up before its group started is left out; once started, an item is committed.
        live = [(item, future) for item, future in entries if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            outcomes = list(self._commit([item for item, _ in live]))
            if len(outcomes) != len(live):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(live)} items")
        except Exception as exc:
            log.exception("%s: a group of %d failed", self._name, len(live))
            outcomes = [_failed(self._name, exc) for _ in live]
        for (_, future), outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def _failed(name: str, cause: Exception) -> GroupCommitFailed:
    failure = GroupCommitFailed(f"{name} failed")
    failure.__cause__ = cause
    return failure
