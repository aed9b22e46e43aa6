"""Workers: who may claim, how a lost worker's jobs are handed back, and the bell that wakes them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

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


def test_a_burst_is_spread_over_the_free_runs_of_every_live_worker(db: Database, tmp_path: Path):
    for vmid in range(1, 51):
        add_instance(db, vmid)
        add_job(db, vmid, JobKind.CREATE, age_s=1)
    store = Store(db)
    for name in ("a", "b"):
        store.register_worker(name, "here", os.getpid(), slots=2)
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
