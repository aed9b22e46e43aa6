"""The store's transitions: compare-and-set under concurrency, and what each one refuses to do."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from engine.db import Database
from engine.errors import Conflict, NotFound
from engine.jobs.outcome import HostOutcome
from engine.models import Flavour, Instance, Job, JobEvent, JobKind, JobState, Lifecycle
from engine.store import Finished, Store, aware
from tests.helpers.store import add_job, asks_for_write_lock, provisioned


def jobs_of(db: Database, vmid: int) -> list[tuple[str, str]]:
    with db.session() as session:
        rows = session.query(Job).filter(Job.instance_id == vmid).order_by(Job.created_at)
        return [(job.kind, job.state) for job in rows]


def take_all(ready: list[Job], _now: datetime, _free_slots: int | None = None) -> list[Job]:
    return ready


def test_a_job_canceled_while_a_claim_chooses_is_either_claimed_or_canceled_never_both(db: Database):
    provisioned(db, 1)
    job_id = add_job(db, 1, JobKind.START)
    store = Store(db)
    choosing, cancel_began = threading.Event(), threading.Event()

    def cancel() -> None:
        assert choosing.wait(10)
        canceled.append(store.cancel(job_id)[0])

    canceller = threading.Thread(target=cancel)

    def begins(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if threading.current_thread() is canceller and asks_for_write_lock(statement):
            cancel_began.set()

    def slow_choice(ready: list[Job], _now: datetime, _free_slots: int | None) -> list[Job]:
        choosing.set()
        # The cancel's transaction asks for the write lock while this claim holds it.
        assert cancel_began.wait(10)
        return ready

    canceled: list[Job | None] = []
    event.listen(db.engine, "before_cursor_execute", begins)
    try:
        canceller.start()
        claimed = store.claim(slow_choice, "run-1")
        canceller.join()
    finally:
        event.remove(db.engine, "before_cursor_execute", begins)
    assert claimed == [job_id]
    # The cancel waited for the claim's transaction: it found the job running and asked its run to stop.
    job = canceled[0]
    assert job is not None and job.state == JobState.RUNNING and job.cancel_requested


def test_a_claim_returns_only_the_jobs_it_took(db: Database):
    provisioned(db, 1)
    provisioned(db, 2)
    first, second = add_job(db, 1, JobKind.START), add_job(db, 2, JobKind.START)
    store = Store(db)
    assert store.cancel(second)[0] is not None  # canceled before the claim: not ready any more
    assert store.claim(take_all, "run-1") == [first]
    assert store.claim(take_all, "run-2") == []  # instance 1 is busy, instance 2 has nothing pending


def test_concurrent_security_group_changes_all_count(db: Database):
    provisioned(db, 1)
    store = Store(db)
    groups = [f"g{i}" for i in range(8)]
    threads = [threading.Thread(target=store.change_groups, args=(1, [g], [])) for g in groups]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with db.session() as session:
        assert sorted(session.get_one(Instance, 1).security_groups) == groups
    assert jobs_of(db, 1) == [(JobKind.FIREWALL, JobState.PENDING)] * 8


def test_the_same_waiting_power_request_is_one_job(db: Database):
    provisioned(db, 1)
    store = Store(db)
    first = store.request_power(1, JobKind.STOP)
    assert store.request_power(1, JobKind.STOP).id == first.id
    other = store.request_power(1, JobKind.START)  # a different request after it is its own job
    assert other.id != first.id
    assert store.request_power(1, JobKind.STOP).id not in (first.id, other.id)  # stop, start, stop: three
    assert [kind for kind, _ in jobs_of(db, 1)] == [JobKind.STOP, JobKind.START, JobKind.STOP]


def test_power_is_refused_while_building_and_for_unknown_or_deleting_instances(db: Database):
    provisioned(db, 1, Lifecycle.BUILDING)
    provisioned(db, 2, Lifecycle.DELETING)
    store = Store(db)
    with pytest.raises(Conflict):
        store.request_power(1, JobKind.START)
    for vmid in (2, 3):
        with pytest.raises(NotFound):
            store.request_power(vmid, JobKind.START)
    assert jobs_of(db, 1) == [] and jobs_of(db, 2) == []


def test_a_delete_supersedes_waiting_jobs_and_asking_again_returns_it(db: Database):
    provisioned(db, 1)
    start = add_job(db, 1, JobKind.START)
    store = Store(db)
    delete = store.request_delete(1)
    assert store.request_delete(1).id == delete.id
    with db.session() as session:
        assert session.get_one(Job, start).state == JobState.CANCELED
        instance = session.get_one(Instance, 1)
        assert instance.lifecycle == Lifecycle.DELETING and instance.delete_requested_at is not None
    assert delete.max_attempts == 5


def test_a_run_given_up_on_cannot_finish_its_jobs(db: Database):
    provisioned(db, 1)
    job_id = add_job(db, 1, JobKind.START)
    store = Store(db)
    assert store.claim(take_all, "run-1") == [job_id]
    assert store.fail_run("run-1", "the playbook run did not end within 60 s") == 1
    late = Finished(job_id, HostOutcome(ok=True), {"run_status": "successful"}, JobState.SUCCESSFUL)
    assert store.finish("run-1", [late], retry_backoff_s=0) == []
    with db.session() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.error) == (JobState.ERROR, "the playbook run did not end within 60 s")


def test_a_failed_job_with_attempts_left_goes_back_to_pending_with_a_backoff(db: Database):
    provisioned(db, 1, Lifecycle.DELETING)
    store = Store(db)
    with db.session() as session:
        session.get_one(Instance, 1).lifecycle = Lifecycle.PROVISIONED
    delete = store.request_delete(1)
    assert store.claim(take_all, "run-1") == [delete.id]
    failed = Finished(delete.id, HostOutcome(ok=False, error="locked"), {}, JobState.FAILED)
    assert [job.id for job in store.finish("run-1", [failed], retry_backoff_s=30)] == [delete.id]
    with db.session() as session:
        job = session.get_one(Job, delete.id)
        assert job.state == JobState.PENDING and job.not_before is not None and job.run_id is None
        assert session.get_one(Instance, 1).lifecycle == Lifecycle.DELETING


def test_a_delete_that_fails_for_good_keeps_the_instance_deleting_with_its_fault(db: Database):
    provisioned(db, 1)
    store = Store(db)
    delete = store.request_delete(1)
    with db.session() as session:
        session.get_one(Job, delete.id).max_attempts = 1
    store.claim(take_all, "run-1")
    failed = Finished(delete.id, HostOutcome(ok=False, error="VM is locked (backup)"), {}, JobState.FAILED)
    store.finish("run-1", [failed], retry_backoff_s=0)
    with db.session() as session:
        instance = session.get_one(Instance, 1)
        assert instance.lifecycle == Lifecycle.DELETING  # never DELETED while the VM is there
        assert (instance.fault_message, instance.fault_details) == (
            "the instance could not be deleted",
            "VM is locked (backup)",
        )


def test_a_vanished_vm_is_not_marked_deleted_while_a_job_of_it_is_open(db: Database):
    provisioned(db, 1)
    provisioned(db, 2)
    add_job(db, 1, JobKind.START)
    store = Store(db)
    assert not store.mark_vanished(1)
    assert store.mark_vanished(2)
    assert not store.mark_vanished(2)  # already deleted: nothing to do


def test_a_job_whose_run_died_under_it_gets_one_more_try_than_its_kind(db: Database):
    provisioned(db, 1, Lifecycle.BUILDING)
    job_id = add_job(db, 1, JobKind.CREATE)
    store = Store(db)
    for run in ("run-1", "run-2"):
        assert store.claim(take_all, run) == [job_id]
        died = HostOutcome(ok=False, unfinished=True, error="the playbook run ended before this VM was done")
        store.finish(run, [Finished(job_id, died, {}, JobState.FAILED, extra_attempt=True)], retry_backoff_s=0)
        with db.session() as session:
            session.get_one(Job, job_id).not_before = None
    with db.session() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.attempts) == (JobState.FAILED, 2)  # retried once, then failed
        assert session.get_one(Instance, 1).lifecycle == Lifecycle.ERROR


def test_concurrent_compare_and_sets_in_write_transactions_never_lose_an_update(db: Database):
    """Two threads each read a counter and write it back plus one, 50 times, each in its own `Database.write()`:
    were two of them to read the same value, an increment would be lost (PostgreSQL lets readers and writers run
    together; only the write lock orders them)."""
    with db.session() as session:
        session.add(Flavour(id="counter", name="counter", cpus=0, ram_mb=16, disk_gb=1))

    def increment(times: int) -> None:
        for _ in range(times):
            with db.write() as session:
                row = session.get_one(Flavour, "counter")
                row.cpus = row.cpus + 1  # written back at the commit

    threads = [threading.Thread(target=increment, args=(50,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with db.session() as session:
        assert session.get_one(Flavour, "counter").cpus == 100


def test_concurrent_claims_never_take_the_same_job(db: Database):
    """Two dispatchers claim from one queue until it is empty: every job is claimed once, by one of them."""
    for vmid in range(1, 41):
        provisioned(db, vmid)
    jobs = {add_job(db, vmid, JobKind.START, age_s=0) for vmid in range(1, 41)}
    store = Store(db)
    claims: dict[str, list[str]] = {"a": [], "b": []}

    def three(ready: list[Job], _now: datetime, _free_slots: int | None) -> list[Job]:
        return ready[:3]

    def dispatcher(name: str) -> None:
        run = 0
        while claimed := store.claim(three, f"run-{name}-{run}"):
            claims[name] += claimed
            run += 1

    threads = [threading.Thread(target=dispatcher, args=(name,)) for name in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = claims["a"] + claims["b"]
    assert sorted(every) == sorted(jobs), "each job claimed exactly once"
    with db.session() as session:
        runs = {job.id: job.run_id for job in session.query(Job)}
        assert all(runs[job_id].startswith(f"run-{name}-") for name, ids in claims.items() for job_id in ids)
        assert {job.state for job in session.query(Job)} == {JobState.RUNNING}


def test_text_from_ansible_is_stored_whatever_it_holds(db: Database):
    """A NUL character, or a task name longer than its column, is refused by PostgreSQL (SQLite keeps both): the
    NUL is dropped and the name cut, so a run's events and its jobs' ends are stored all the same."""
    provisioned(db, 1)
    job_id = add_job(db, 1, JobKind.START)
    store = Store(db)
    assert store.claim(take_all, "run-1") == [job_id]
    store.add_events([JobEvent(job_id=job_id, counter=1, event="runner_on_ok", task="t" * 300, stdout="a\x00b")])
    failed = Finished(job_id, HostOutcome(ok=False, error="Proxmox said \x00no"), {}, JobState.FAILED)
    assert [job.id for job in store.finish("run-1", [failed], retry_backoff_s=0)] == [job_id]
    with db.session() as session:
        event = session.query(JobEvent).one()
        assert (event.task, event.stdout) == ("t" * 255, "ab")
        assert session.get_one(Job, job_id).error == "Proxmox said no"


def test_stored_moments_read_back_as_the_same_moments_in_utc(db: Database):
    """The store writes UTC moments (utcnow). PostgreSQL gives them back aware, in UTC (the engine sets the session's
    time zone); SQLite naive, holding UTC. `aware` makes either comparable with now."""
    provisioned(db, 1)
    job_id = add_job(db, 1, JobKind.START)
    moment = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    with db.session() as session:
        session.get_one(Job, job_id).not_before = moment
    with db.session() as session:
        stored = session.get_one(Job, job_id).not_before
    assert stored is not None and stored.utcoffset() in (None, timedelta(0))
    assert aware(stored) == moment
    assert Store(db).claim(take_all, "run-1") == [], "not due before that moment"


def test_a_flavour_change_waits_for_another_writer_instead_of_failing(db: Database):
    """It reads, then writes: without the write lock from its first statement, SQLite refuses such a transaction at
    once beside another writer (the audit log's writer thread, the intake), which the API answered with a 500."""
    store = Store(db)
    holding, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        with store.writing() as session:
            session.add(Flavour(id="other", name="Other", cpus=1, ram_mb=512, disk_gb=5))
            session.flush()
            holding.set()
            assert release.wait(10)

    writer = threading.Thread(target=other_writer)
    writer.start()
    assert holding.wait(10)
    timer = threading.Timer(0.3, release.set)
    timer.start()
    try:
        with store.writing() as session:
            assert session.get(Flavour, "other") is not None, "it began after the other writer committed"
            session.add(Flavour(id="mine", name="Mine", cpus=1, ram_mb=512, disk_gb=5))
    finally:
        release.set()
        writer.join()
        timer.cancel()
    with store.read() as session:
        assert {f.id for f in session.query(Flavour).all()} >= {"other", "mine"}
