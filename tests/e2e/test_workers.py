"""Worker processes (`provisioner run` with PROVISIONER_WORKERS=2) on the simulator, with real playbook runs, on both
queues (the embedded one on SQLite, procrastinate on PostgreSQL): two workers share a burst, one VM's jobs run in
order and never at once, a request made twice runs once, a worker killed mid-run has its jobs finished by another
without a second clone, a running job is canceled from the API while a worker process runs it, and the API answers
while a worker is stuck in a run."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator import start_simulator
from tests.conftest import LiveService, start_service, wait_for
from tests.helpers.faults import control
from tests.helpers.workers import clones, create_all, delete_all, jobs_of, running_on, workers

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    handle = start_simulator(tmp_path_factory.mktemp("workers-simulator"), time_scale=0)
    yield handle
    handle.stop()


@pytest.fixture(scope="module", params=["embedded", "procrastinate"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sim: Any
) -> Iterator[LiveService]:
    overrides: dict[str, Any] = {}
    if request.param == "procrastinate":
        overrides["database_url"] = request.getfixturevalue("postgres").new_database(migrated=False)
    live = start_service(tmp_path_factory.mktemp("workers"), sim, workers=2, worker_heartbeat_s=1.0, **overrides)
    assert live.runtime.settings.queue_backend == request.param
    wait_for(lambda: len(workers(live)) == 2, timeout=60, what="two workers to join")
    yield live
    live.stop()


@pytest.fixture(autouse=True)
def no_fault_left(sim: Any) -> Iterator[None]:
    yield
    assert control(sim, "DELETE").status_code == 200


def test_two_workers_share_a_burst_and_make_each_vm_once(service: LiveService, sim: Any):
    since = len(sim.sim.requests)
    ids = create_all(service, [f"VISA-INSTANCE-SHARE-{n}" for n in range(50)])
    for instance_id in ids:
        service.wait_state(instance_id, "ACTIVE", timeout=300)
    creates = jobs_of(service, ids)
    assert len(creates) == 50 and {job["state"] for job in creates} == {"successful"}
    assert len({job["worker_id"] for job in creates}) == 2, "both workers ran some of the burst"
    assert clones(sim, since) == {int(i): 1 for i in ids}
    delete_all(service, ids)


def test_one_vms_jobs_run_in_order_one_at_a_time_and_a_request_made_twice_runs_once(service: LiveService, sim: Any):
    [instance_id] = create_all(service, ["VISA-INSTANCE-ORDER"])
    service.wait_state(instance_id, "ACTIVE", timeout=120)
    since = len(sim.sim.requests)
    for action in ("shutdown", "shutdown", "start", "reboot", "shutdown"):  # the second shutdown waits: the same job
        assert service.client.post(f"/api/instances/{instance_id}/{action}").status_code == 200
    wait_for(lambda: not [j for j in power_jobs(service, instance_id) if j["state"] in ("pending", "running")], 120)
    jobs = power_jobs(service, instance_id)
    assert [(j["kind"], j["state"]) for j in jobs] == [
        ("shutdown", "successful"),
        ("start", "successful"),
        ("reboot", "successful"),
        ("shutdown", "successful"),
    ]
    for earlier, later in itertools.pairwise(jobs):
        assert later["started_at"] >= earlier["finished_at"], "one VM's jobs never overlap"
    vmid = service.instance(instance_id)["id"]
    calls = [
        p.rsplit("/", 1)[1] for m, p, _ in list(sim.sim.requests)[since:] if m == "POST" and f"/{vmid}/status/" in p
    ]
    assert calls == ["shutdown", "start", "reboot", "shutdown"], "Proxmox saw them once each, in order"
    delete_all(service, [instance_id])


def power_jobs(service: LiveService, instance_id: str) -> list[dict[str, Any]]:
    listed = service.operator.get("/v1/jobs", params={"limit": 1000}).json()
    mine = [j for j in listed if str(j["instance_id"]) == instance_id and j["kind"] not in ("create", "delete")]
    return sorted(mine, key=lambda j: j["created_at"])


def test_a_worker_killed_mid_run_has_its_jobs_finished_by_another_without_a_second_clone(
    service: LiveService, sim: Any
):
    since = len(sim.sim.requests)
    assert control(sim, "POST", {"fault": "slow", "seconds": 1}).status_code == 200  # runs take a while now
    ids = create_all(service, [f"VISA-INSTANCE-KILLED-{n}" for n in range(4)])
    wait_for(lambda: len(clones(sim, since)) == 4 and running_on(service, ids), timeout=120, what="the clones")
    victim_id = next(iter(running_on(service, ids).values()))["worker_id"]
    victim = next(w for w in workers(service) if w["id"] == victim_id)
    os.kill(victim["pid"], signal.SIGKILL)
    assert control(sim, "DELETE").status_code == 200
    for instance_id in ids:
        service.wait_state(instance_id, "ACTIVE", timeout=180)
    creates = jobs_of(service, ids)
    handed_back = [job for job in creates if job["attempts"] == 2]
    assert handed_back, "the killed worker's jobs ran again"
    assert all(job["state"] == "successful" and job["worker_id"] != victim_id for job in handed_back)
    assert clones(sim, since) == {int(i): 1 for i in ids}, "a VM was cloned twice"
    assert victim_id not in {w["id"] for w in workers(service)}
    wait_for(lambda: len(workers(service)) == 2, timeout=60, what="a worker to replace the killed one")
    delete_all(service, ids)


def test_a_running_job_is_canceled_from_the_api_while_a_worker_process_runs_it(service: LiveService, sim: Any):
    assert control(sim, "POST", {"fault": "slow", "seconds": 2}).status_code == 200
    [instance_id] = create_all(service, ["VISA-INSTANCE-CANCELED"])
    wait_for(lambda: running_on(service, [instance_id]), timeout=60, what="a worker to run the create")
    [job_id] = running_on(service, [instance_id])
    # The API answers at once while the worker is stuck in its run: a create, reads, the operator API.
    [other] = create_all(service, ["VISA-INSTANCE-MEANWHILE"])
    assert service.client.get("/api/instances").status_code == 200
    assert service.instance(other)["state"] == "BUILDING"
    assert running_on(service, [instance_id]), "the first create is still running"
    canceled = service.operator.post(f"/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 202 and canceled.json()["cancel_requested"]
    wait_for(
        lambda: service.operator.get(f"/v1/jobs/{job_id}").json()["state"] == "canceled",
        timeout=60,
        what="the worker to stop the run",
    )
    run_id = service.operator.get(f"/v1/jobs/{job_id}").json()["run_id"]
    assert run_id and not [p for p in Path("/proc").iterdir() if _cmdline_has(p, f"/{run_id}/".encode())], (
        "the canceled run's playbook processes (ansible-playbook and its forks) are gone"
    )
    assert control(sim, "DELETE").status_code == 200
    service.wait_state(other, "ACTIVE", timeout=120)
    assert service.instance(instance_id)["state"] == "ERROR"  # a create canceled mid-run failed, with the reason
    delete_all(service, [instance_id, other])


def _cmdline_has(process: Path, marker: bytes) -> bool:
    if not process.name.isdigit():
        return False
    try:
        return marker in (process / "cmdline").read_bytes()
    except OSError:
        return False
