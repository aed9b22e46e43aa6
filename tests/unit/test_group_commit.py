"""The group committer: items queued while it is busy are committed together, each caller gets its own outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

from engine.group_commit import GroupCommitFailed, GroupCommitter


class Recorder:
    """A commit function that records its groups and calls `on_commit`; the first group waits until `release` is
    set."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.on_commit: Callable[[], object] = lambda: None

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.groups.append(items)
        self.started.set()
        self.on_commit()
        assert self.release.wait(10)
        return [ValueError(f"odd {n}") if n % 2 else n * 10 for n in items]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def committer(recorder: Recorder) -> Iterator[GroupCommitter[int, int]]:
    committer: GroupCommitter[int, int] = GroupCommitter(recorder, name="test-committer")
    committer.start()
    yield committer
    recorder.release.set()
    committer.stop()


def test_items_queued_while_a_group_commits_form_the_next_group(
    committer: GroupCommitter[int, int], recorder: Recorder
):
    first = committer.submit(0)
    assert recorder.started.wait(5)
    queued = [committer.submit(n) for n in range(1, 7)]
    assert not first.done() and not any(f.done() for f in queued), "no outcome before the commit returns"
    recorder.release.set()
    assert first.result(5) == 0
    assert [f.result(5) for f in queued[1::2]] == [20, 40, 60]
    for future, n in zip(queued[::2], (1, 3, 5), strict=True):
        with pytest.raises(ValueError, match=f"odd {n}"):
            future.result(5)
    assert recorder.groups == [[0], [1, 2, 3, 4, 5, 6]]


def test_a_failing_commit_fails_every_caller_of_its_group(recorder: Recorder):
    def broken(items: list[int]) -> list[int | Exception]:
        recorder.groups.append(items)
        raise RuntimeError("the store is gone")

    committer: GroupCommitter[int, int] = GroupCommitter(broken, name="broken")
    committer.start()
    try:
        futures = [committer.submit(n) for n in range(4)]
        for future in futures:
            with pytest.raises(GroupCommitFailed) as failure:
                future.result(5)
            assert isinstance(failure.value.__cause__, RuntimeError)
    finally:
        committer.stop()
    assert sorted(n for group in recorder.groups for n in group) == [0, 1, 2, 3]


def test_stop_commits_what_is_queued_then_refuses_more(committer: GroupCommitter[int, int], recorder: Recorder):
    first = committer.submit(0)
    assert recorder.started.wait(5)
    queued = committer.submit(2)
    stopper = threading.Thread(target=committer.stop)
    stopper.start()
    recorder.release.set()
    stopper.join(5)
    assert not stopper.is_alive()
    assert (first.result(0), queued.result(0)) == (0, 20)
    with pytest.raises(GroupCommitFailed, match="stopped"):
        committer.submit(4)


def test_a_caller_that_gave_up_before_its_group_started_is_not_committed(
    committer: GroupCommitter[int, int], recorder: Recorder
):
    committer.submit(0)
    assert recorder.started.wait(5)
    abandoned = committer.submit(2)
    kept = committer.submit(4)
    assert abandoned.cancel()
    recorder.release.set()
    assert kept.result(5) == 40
    assert recorder.groups == [[0], [4]]


def test_commit_awaits_without_blocking_the_event_loop(committer: GroupCommitter[int, int], recorder: Recorder):
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        committing = loop.create_future()
        recorder.on_commit = lambda: loop.call_soon_threadsafe(lambda: committing.done() or committing.set_result(None))
        pending = [asyncio.create_task(committer.commit(n)) for n in (0, 2, 4)]
        # The loop runs this while the first group is being committed (and held), so the commit does not block it.
        await asyncio.wait_for(committing, 5)
        assert not any(task.done() for task in pending)
        recorder.release.set()
        return list(await asyncio.gather(*pending))

    assert asyncio.run(scenario()) == [0, 20, 40]
