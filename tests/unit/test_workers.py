"""Workers: who may claim, how a lost worker's jobs are handed back, and the bell that wakes them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from engine import models
from engine.db import Database
from engine.jobs import bell
from engine.models import Job, JobKind, JobState, utcnow
from engine.store import Store
from tests.conftest import wait_for
from tests.helpers.store import add_instance, add_job, add_worker, make_executor, make_worker


def job(db: Database, job_id: str) -> Job:
    with db.session() as session:
        return session.get_one(Job, job_id)


def worker_ids(db: Database) -> set[str]:
    return {w.id for w in Store(db).workers()}


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_claim_records_the_worker_and_a_draining_or_unknown_worker_claims_nothing(db: Database, tmp_path: Path):
    add_instance(db, 1)
    job_id = add_job(db, 1, JobKind.CREATE)
    assert make_executor(db, tmp_path, worker_id="nobody")._claim_batch() is None  # not registered (or lost)
    add_worker(db, "w1", "here", os.getpid())
    Store(db).heartbeat("w1", draining=True)
    assert make_executor(db, tmp_path, worker_id="w1")._claim_batch() is None
    Store(db).heartbeat("w1", draining=False)
    claimed = make_executor(db, tmp_path, worker_id="w1")._claim_batch()
    assert claimed is not None and claimed[1] == [job_id]
    assert (job(db, job_id).state, job(db, job_id).worker_id) == (JobState.RUNNING, "w1")


def test_a_silent_worker_is_lost_its_jobs_go_back_and_the_kinds_not_to_repeat_fail(db: Database, tmp_path: Path):
    for vmid in (1, 2, 3):
        add_instance(db, vmid)
    add_worker(db, "silent", "elsewhere", 4242, silent_s=31)
    add_worker(db, "alive", "elsewhere", 4243, silent_s=1)
    create = add_job(db, 1, JobKind.CREATE, JobState.RUNNING, worker_id="silent")
    reboot = add_job(db, 2, JobKind.REBOOT, JobState.RUNNING, worker_id="silent")
    others = add_job(db, 3, JobKind.CREATE, JobState.RUNNING, worker_id="alive")
    assert make_worker(db, tmp_path, lost_after_s=30).recover_lost() == 2
    assert job(db, create).state == JobState.PENDING and job(db, create).worker_id is None
    assert job(db, reboot).state == JobState.FAILED
    assert job(db, reboot).error == "interrupted: its worker was lost (no heartbeat for 30 s); not repeated"
    assert job(db, others).state == JobState.RUNNING and job(db, others).worker_id == "alive"
    assert worker_ids(db) == {"alive"}


def test_a_worker_of_this_host_whose_process_is_gone_is_lost_at_once(db: Database, tmp_path: Path):
    add_instance(db, 1)
    add_worker(db, "crashed", "here", dead_pid(), silent_s=0)
    add_worker(db, "running", "here", os.getpid(), silent_s=0)
    add_worker(db, "remote", "there", dead_pid(), silent_s=0)  # another machine's pid says nothing here
    job_id = add_job(db, 1, JobKind.CREATE, JobState.RUNNING, worker_id="crashed")
    assert make_worker(db, tmp_path, host="here").recover_lost() == 1
    assert job(db, job_id).state == JobState.PENDING
    assert worker_ids(db) == {"running", "remote"}


def test_jobs_a_service_from_before_workers_left_running_are_recovered(db: Database, tmp_path: Path):
    add_instance(db, 1)
    job_id = add_job(db, 1, JobKind.CREATE, JobState.RUNNING)  # no worker_id
    assert make_worker(db, tmp_path).recover_lost() == 1
    assert job(db, job_id).state == JobState.PENDING


def test_a_worker_declared_lost_stops_its_runs_and_joins_again(db: Database, tmp_path: Path):
    worker = make_worker(db, tmp_path)
    Store(db).register_worker(worker.id, worker.host, worker.pid)
    stopped = worker.executor._cancels["run-1"] = threading.Event()
    assert Store(db).recover(worker.id) == 0  # another worker found it silent
    worker._beat()
    assert stopped.is_set()
    assert worker.id in worker_ids(db)


def test_a_stopping_worker_hands_back_what_it_did_not_finish_and_leaves(db: Database, tmp_path: Path):
    add_instance(db, 1)
    worker = make_worker(db, tmp_path)
    worker.start()
    job_id = add_job(db, 1, JobKind.CREATE, JobState.RUNNING, worker_id=worker.id)
    worker.stop()
    assert job(db, job_id).state == JobState.PENDING
    assert worker_ids(db) == set()


def test_a_worker_beats(db: Database, tmp_path: Path):
    worker = make_worker(db, tmp_path)
    worker.start()
    try:
        with db.session() as session:
            first = session.get_one(models.Worker, worker.id).heartbeat_at

        def beat_moved() -> bool:
            with db.session() as session:
                return session.get_one(models.Worker, worker.id).heartbeat_at > first

        wait_for(beat_moved, timeout=10, what="a heartbeat")
    finally:
        worker.stop()


def test_the_bell_wakes_each_listener_of_its_topic_once(tmp_path: Path):
    jobs_a, jobs_b, runs = (bell.Listener(tmp_path, topic) for topic in (bell.JOBS, bell.JOBS, bell.RUNS))
    try:
        assert not jobs_a.wait(0)
        bell.ring(tmp_path, bell.JOBS)
        bell.ring(tmp_path, bell.JOBS)
        assert jobs_a.wait(1) and jobs_b.wait(1)
        assert not jobs_a.wait(0)  # both rings were answered by one wake-up
        assert not runs.wait(0)
    finally:
        for listener in (jobs_a, jobs_b, runs):
            listener.close()
    assert list(tmp_path.iterdir()) == []


def test_a_listener_that_died_is_forgotten_by_the_next_ring(tmp_path: Path):
    fifo = tmp_path / f"{bell.JOBS}-1-dead"
    os.mkfifo(fifo)  # nobody reads it
    bell.ring(tmp_path, bell.JOBS)
    assert not fifo.exists()
    bell.ring(tmp_path / "missing", bell.JOBS)  # no directory yet: nothing to wake


def burst_and_two_workers(db: Database) -> Store:
    """50 creates ready, and two live workers "a" and "b" of 2 run slots each."""
    for vmid in range(1, 51):
        add_instance(db, vmid)
        add_job(db, vmid, JobKind.CREATE, age_s=1)
    store = Store(db)
    for name in ("a", "b"):
        store.register_worker(name, "here", os.getpid(), slots=2)
    return store


def test_a_burst_is_spread_over_the_free_runs_of_every_live_worker(db: Database, tmp_path: Path):
    store = burst_and_two_workers(db)
    store.register_worker("silent", "there", 1, slots=8)
    with db.session() as session:
        session.get_one(models.Worker, "silent").heartbeat_at = utcnow() - timedelta(seconds=60)
    a, b = (make_executor(db, tmp_path, worker_id=name, parallel_runs=2) for name in ("a", "b"))
    sizes = []
    for executor, idle in ((a, 2), (a, 1), (b, 2), (b, 1)):
        claimed = executor._claim_batch(idle)
        assert claimed is not None
        sizes.append(len(claimed[1]))
    assert sizes == [13, 13, 12, 12]  # 4 free runs, then 3, 2, 1: the silent worker's 8 count for nothing


def test_a_queue_claims_a_batch_for_each_free_run_of_every_worker_and_hands_each_over(db: Database, tmp_path: Path):
    burst_and_two_workers(db)
    handed: list[str] = []
    hand_over = lambda _c, run_id: handed.append(run_id)  # noqa: E731
    runs, wait_s = make_executor(db, tmp_path, worker_id="a").claim_for_queue(hand_over)
    assert runs == handed and len(runs) == 4 and wait_s is None
    with db.session() as session:
        sizes = sorted(len([j for j in session.query(Job).all() if j.run_id == run]) for run in runs)
    assert sizes == [12, 12, 13, 13]  # four free runs, then none: the rest waits for one to end
    assert make_executor(db, tmp_path, worker_id="b").claim_for_queue(hand_over)[0] == []


def test_a_queue_that_cannot_take_a_run_leaves_its_jobs_unclaimed(db: Database, tmp_path: Path):
    add_instance(db, 1)
    job_id = add_job(db, 1, JobKind.CREATE, age_s=1)
    Store(db).register_worker("a", "here", os.getpid())

    def refuse(_connection: object, run_id: str) -> None:
        raise RuntimeError(f"the queue is down: {run_id}")

    with pytest.raises(RuntimeError, match="the queue is down"):
        make_executor(db, tmp_path, worker_id="a").claim_for_queue(refuse)
    assert (job(db, job_id).state, job(db, job_id).run_id) == (JobState.PENDING, None), "the claim was rolled back"


def test_jobs_waiting_for_their_batch_window_tell_the_queue_when_to_look_again(db: Database, tmp_path: Path):
    add_instance(db, 1)
    add_job(db, 1, JobKind.CREATE, age_s=0)
    Store(db).register_worker("a", "here", os.getpid())
    runs, wait_s = make_executor(db, tmp_path, worker_id="a", window=5.0).claim_for_queue(lambda _c, run_id: None)
    assert runs == [] and wait_s is not None and 4.0 < wait_s <= 5.0


def test_a_run_starts_on_the_worker_that_took_it_once_and_never_after_it_was_recovered(db: Database, tmp_path: Path):
    for vmid in (1, 2):
        add_instance(db, vmid)
    Store(db).register_worker("dispatcher", "here", os.getpid(), slots=2)
    create = add_job(db, 1, JobKind.CREATE, age_s=1)
    reboot = add_job(db, 2, JobKind.REBOOT, age_s=1)
    executor = make_executor(db, tmp_path, worker_id="dispatcher", parallel_runs=2)
    [create_run, reboot_run] = executor.claim_for_queue(lambda _c, run_id: None)[0]
    store = Store(db)
    assert store.start_run(create_run, "runner") == [create]
    assert job(db, create).worker_id == "runner"
    assert store.recover_run(reboot_run, "its worker was lost") == 1
    assert store.start_run(reboot_run, "runner") == [], "a recovered run does not start"
    assert job(db, reboot).state == JobState.FAILED  # a reboot is not repeated
    assert store.recover_run(create_run, "its worker was lost") == 1
    assert (job(db, create).state, job(db, create).run_id) == (JobState.PENDING, None)
