"""The procrastinate queue's own guarantees, on PostgreSQL with the service's two worker processes and real playbook
runs: a run handed over twice runs once, and a run whose worker was killed is found stalled by the tick (its
procrastinate job ends failed) while its jobs finish on the other worker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from procrastinate.exceptions import AlreadyEnqueued
from sqlalchemy import text

from engine.jobs.procrastinate_queue import RUN, RUNS_QUEUE, run_lock, sync_app
from tests.conftest import LiveService, start_service, wait_for
from tests.helpers.faults import control
from tests.helpers.postgres import TestPostgres
from tests.helpers.workers import clones, create_all, delete_all, jobs_of, running_on, workers

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]

LOST_AFTER_S = 5.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, simulator: Any, postgres: TestPostgres) -> Iterator[LiveService]:
    live = start_service(
        tmp_path_factory.mktemp("procrastinate"),
        simulator,
        workers=2,
        worker_heartbeat_s=1.0,
        worker_lost_after_s=LOST_AFTER_S,
        database_url=postgres.new_database(migrated=False),
    )
    assert live.runtime.settings.queue_backend == "procrastinate"
    wait_for(lambda: len(workers(live)) == 2, timeout=60, what="two workers to join")
    yield live
    live.stop()


@pytest.fixture(autouse=True)
def no_fault_left(simulator: Any) -> Iterator[None]:
    yield
    assert control(simulator, "DELETE").status_code == 200


def run_jobs(service: LiveService, run_id: str) -> list[tuple[int, str]]:
    """procrastinate's jobs of a run, (id, status); those that succeeded are gone (the workers delete them)."""
    query = text(
        "SELECT id, status FROM procrastinate_jobs WHERE task_name = :task AND args->>'run_id' = :run ORDER BY id"
    )
    with service.runtime.db.engine.connect() as connection:
        return [(row.id, str(row.status)) for row in connection.execute(query, {"task": RUN, "run": run_id})]


def test_a_run_handed_over_twice_runs_once(service: LiveService, simulator: Any):
    since = len(simulator.sim.requests)
    assert control(simulator, "POST", {"fault": "slow", "seconds": 1}).status_code == 200
    [instance_id] = create_all(service, ["VISA-INSTANCE-TWICE"])
    wait_for(lambda: running_on(service, [instance_id]), timeout=60, what="a worker to run the create")
    [job] = running_on(service, [instance_id]).values()
    app = sync_app(service.runtime.settings.db_url).open()
    try:
        lock = run_lock(job["run_id"])
        again = app.configure_task(RUN, queue=RUNS_QUEUE, lock=lock, queueing_lock=lock)
        again.defer(run_id=job["run_id"])  # waits behind the run going on (same lock)
        with pytest.raises(AlreadyEnqueued):
            again.defer(run_id=job["run_id"])  # one waiting already
    finally:
        app.close()
    assert control(simulator, "DELETE").status_code == 200
    service.wait_state(instance_id, "ACTIVE", timeout=120)
    wait_for(lambda: run_jobs(service, job["run_id"]) == [], timeout=60, what="both hand-overs to end")
    [create] = jobs_of(service, [instance_id])
    assert (create["state"], create["attempts"]) == ("successful", 1)
    assert clones(simulator, since) == {int(instance_id): 1}
    events = service.operator.get(f"/v1/jobs/{job['id']}/events", params={"limit": 5000}).json()
    assert [e["event"] for e in events].count("playbook_on_stats") == 1, "one playbook run"
    delete_all(service, [instance_id])


def test_a_run_whose_worker_was_killed_is_found_stalled_and_its_jobs_finish_elsewhere(
    service: LiveService, simulator: Any
):
    since = len(simulator.sim.requests)
    assert control(simulator, "POST", {"fault": "slow", "seconds": 1}).status_code == 200
    ids = create_all(service, [f"VISA-INSTANCE-STALLED-{n}" for n in range(2)])
    wait_for(lambda: len(clones(simulator, since)) == 2 and running_on(service, ids), timeout=120, what="the clones")
    victim_job = next(iter(running_on(service, ids).values()))
    victim = next(w for w in workers(service) if w["id"] == victim_job["worker_id"])
    os.kill(victim["pid"], signal.SIGKILL)
    assert control(simulator, "DELETE").status_code == 200
    for instance_id in ids:
        service.wait_state(instance_id, "ACTIVE", timeout=180)
    wait_for(
        lambda: [status for _id, status in run_jobs(service, victim_job["run_id"])] == ["failed"],
        timeout=LOST_AFTER_S + 30,
        what="the tick to find the killed worker's run stalled",
    )
    assert clones(simulator, since) == {int(i): 1 for i in ids}, "a VM was cloned twice"
    assert all(job["state"] == "successful" for job in jobs_of(service, ids))
    delete_all(service, ids)
