"""What the worker tests ask the service and the simulator: workers, jobs, bursts of creates, clones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.conftest import LiveService, visa_body, wait_for


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
