"""The job queue: batching, per-instance ordering, cancel across processes (no Ansible process involved)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from engine.db import Database
from engine.jobs import bell
from engine.jobs.queue import StoreQueue
from engine.models import Instance, Job, JobKind, JobState, Lifecycle, utcnow
from engine.store import Store
from tests.helpers.store import add_instance, add_job, make_executor


def states(db: Database) -> dict[str, str]:
    with db.session() as session:
        return {job.id: job.state for job in session.query(Job)}


def test_a_batch_holds_one_job_per_instance_of_the_oldest_kind(db: Database, tmp_path: Path):
    for vmid in (1, 2, 3):
        add_instance(db, vmid)
    first = [add_job(db, vmid, JobKind.CREATE, age_s=10 - vmid) for vmid in (1, 2)]
    later = add_job(db, 1, JobKind.START, age_s=5)
    other = add_job(db, 3, JobKind.DELETE, age_s=4)
    claimed = make_executor(db, tmp_path)._claim_batch()
    assert claimed is not None
    _run_id, ids = claimed
    assert sorted(ids) == sorted(first)
    assert states(db)[later] == JobState.PENDING and states(db)[other] == JobState.PENDING
    # instance 1 is busy now: its start waits; the delete of instance 3 can go
    _run_id, ids = make_executor(db, tmp_path)._claim_batch() or (None, [])
    assert ids == [other]


def test_batches_are_capped_and_wait_for_the_window(db: Database, tmp_path: Path):
    for vmid in range(1, 6):
        add_instance(db, vmid)
        add_job(db, vmid, JobKind.CREATE, age_s=0)
    assert make_executor(db, tmp_path, window=30)._claim_batch() is None  # young jobs wait for company
    claimed = make_executor(db, tmp_path, max_batch=2, window=30)._claim_batch()
    assert claimed is not None and len(claimed[1]) == 2  # a full batch goes at once


def test_ready_jobs_are_spread_over_the_idle_runs(db: Database, tmp_path: Path):
    for vmid in range(1, 8):
        add_instance(db, vmid)
        add_job(db, vmid, JobKind.CREATE, age_s=1)
    executor = make_executor(db, tmp_path, parallel_runs=2)
    first = executor._claim_batch(idle_runs=2)
    assert first is not None and len(first[1]) == 4  # 7 jobs, 2 idle runs: 4 now
    second = executor._claim_batch(idle_runs=1)
    assert second is not None and len(second[1]) == 3  # the rest for the other run
    assert set(first[1]).isdisjoint(second[1])


def test_jobs_not_due_yet_are_skipped(db: Database, tmp_path: Path):
    add_instance(db, 1)
    job_id = add_job(db, 1, JobKind.DELETE)
    with db.session() as session:
        session.get(Job, job_id).not_before = utcnow() + timedelta(minutes=5)
    assert make_executor(db, tmp_path)._claim_batch() is None


def test_cancel_of_a_pending_job_is_immediate(db: Database, tmp_path: Path):
    add_instance(db, 1)
    job_id = add_job(db, 1, JobKind.CREATE)
    queue = StoreQueue(Store(db), tmp_path / "bell")
    job = queue.cancel(job_id)
    assert job is not None and job.state == JobState.CANCELED
    with db.session() as session:  # a create canceled before it ran: the instance failed, with the reason
        instance = session.get(Instance, 1)
        assert instance.lifecycle == Lifecycle.ERROR and instance.fault_details == "canceled before it ran"
    assert queue.cancel("no-such-job") is None


def test_cancel_of_a_running_job_reaches_the_worker_running_it(db: Database, tmp_path: Path):
    """The API process marks the job and rings; the worker's executor stops the run whose every job asked."""
    for vmid in (1, 2):
        add_instance(db, vmid)
        add_job(db, vmid, JobKind.CREATE)
    Store(db).register_worker("w1", "here", 1)
    executor = make_executor(db, tmp_path, worker_id="w1")
    claimed = executor._claim_batch()
    assert claimed is not None
    run_id, job_ids = claimed
    stop = executor._cancels[run_id] = threading.Event()
    listener = bell.Listener(tmp_path / "bell", bell.JOBS)
    try:
        queue = StoreQueue(Store(db), tmp_path / "bell")
        job = queue.cancel(job_ids[0])
        assert job is not None and job.state == JobState.RUNNING and job.cancel_requested
        executor.stop_canceled()
        assert not stop.is_set()  # the other VM's job in the run did not ask
        queue.cancel(job_ids[1])
        assert listener.wait(5)  # the worker was told
        executor.stop_canceled()
        assert stop.is_set()
    finally:
        listener.close()
