"""Worker processes (`provisioner run` with PROVISIONER_WORKERS=2) on the simulator, with real playbook runs: two
workers share a burst, a worker killed mid-run has its jobs finished by another without a second clone, a running
job is canceled from the API while a worker process runs it, and the API answers while a worker is stuck in a run."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from simulator import start_simulator
from tests.conftest import LiveService, start_service, visa_body, wait_for
from tests.helpers.faults import control

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    handle = start_simulator(tmp_path_factory.mktemp("workers-simulator"), time_scale=0)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, sim: Any) -> Iterator[LiveService]:
    live = start_service(tmp_path_factory.mktemp("workers"), sim, workers=2, worker_heartbeat_s=1.0)
    wait_for(lambda: len(workers(live)) == 2, timeout=60, what="two workers to join")
    yield live
    live.stop()


@pytest.fixture(autouse=True)
def no_fault_left(sim: Any) -> Iterator[None]:
    yield
    assert control(sim, "DELETE").status_code == 200


def workers(service: LiveService) -> list[dict[str, Any]]:
    return service.operator.get("/v1/workers").json()  # type: ignore[no-any-return]


def jobs_of(service: LiveService, ids: list[str], kind: str = "create") -> list[dict[str, Any]]:
    listed = service.operator.get("/v1/jobs", params={"limit": 1000}).json()
    return [job for job in listed if job["kind"] == kind and str(job["instance_id"]) in ids]


def create_all(service: LiveService, names: list[str]) -> list[str]:
    with ThreadPoolExecutor(len(names)) as pool:
        responses = list(pool.map(lambda n: service.client.post("/api/instances", json=visa_body(n)), names))
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses if r.status_code != 201]
    return [str(r.json()["id"]) for r in responses]


def clones(sim: Any, since: int) -> dict[int, int]:
    """How many clone requests the simulator took for each new VMID since an index of its request log."""
    counts: dict[int, int] = {}
    for method, path, body in list(sim.sim.requests)[since:]:
        if method == "POST" and path.endswith("/clone"):
            fields = dict(part.split(b"=", 1) for part in body.split(b"&") if b"=" in part)
            vmid = int(fields[b"newid"])
            counts[vmid] = counts.get(vmid, 0) + 1
    return counts


def delete_all(service: LiveService, ids: list[str]) -> None:
    for instance_id in ids:
        assert service.client.delete(f"/api/instances/{instance_id}").status_code == 200
    for instance_id in ids:
        wait_for(
            lambda i=instance_id: service.client.get(f"/api/instances/{i}").status_code == 404,
            timeout=180,
            what="the instances to be gone",
        )


def running_on(service: LiveService, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The create jobs of ids that a worker runs now, by job id."""
    return {job["id"]: job for job in jobs_of(service, ids) if job["state"] == "running" and job["worker_id"]}


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
