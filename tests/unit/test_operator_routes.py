"""The operator API (/v1) and the health routes over the HTTP seam (tests/unit/conftest.py), with a fake service."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from engine.models import JobKind, JobState
from tests.conftest import OPERATOR_TOKEN, TOKEN
from tests.helpers.fake_provisioner import FakeProvisioner, job, job_event, worker_view

WHEN = "2026-01-02T03:04:05.678000Z"
CREATE_JOB = {
    "id": "3f0c9a52-0000-4000-8000-000000000001",
    "kind": "create",
    "instance_id": 100001,
    "state": "successful",
    "params": {"template": 9000},
    "attempts": 1,
    "cancel_requested": False,
    "result": {"address": "198.18.0.5"},
    "error": None,
    "created_at": WHEN,
    "started_at": WHEN,
    "finished_at": WHEN,
    "worker_id": None,
    "run_id": None,
}
JOB_ID = CREATE_JOB["id"]
SMALL = {"id": "small", "name": "Small", "cpus": 2, "ram_mb": 4096, "disk_gb": 20, "full_clone": None}
ROUTES = [
    ("GET", "/v1/jobs"),
    ("GET", f"/v1/jobs/{JOB_ID}"),
    ("GET", f"/v1/jobs/{JOB_ID}/events"),
    ("POST", f"/v1/jobs/{JOB_ID}/cancel"),
    ("GET", "/v1/workers"),
    ("GET", "/v1/flavours"),
    ("PUT", "/v1/flavours/small"),
    ("DELETE", "/v1/flavours/small"),
    ("GET", "/v1/no-such-route"),
]


@pytest.fixture
def jobs(fake: FakeProvisioner) -> FakeProvisioner:
    fake.job_rows[JOB_ID] = job(JOB_ID, 100001)
    fake.job_rows["j-start"] = job("j-start", 100002, JobKind.START, state=JobState.RUNNING, finished_at=None)
    fake.events[JOB_ID] = [job_event(JOB_ID, counter) for counter in (1, 2)] + [
        job_event(JOB_ID, 3, "playbook_on_stats", task=None, changed=False, stdout="", data={})
    ]
    return fake


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "credential",
    [{}, {"Authorization": f"Bearer {TOKEN}"}, {"X-Auth-Token": TOKEN}, {"Authorization": OPERATOR_TOKEN}],
)
def test_every_operator_path_needs_the_operator_token_before_the_service_is_asked(
    anonymous_client: TestClient, fake: FakeProvisioner, method: str, path: str, credential: dict[str, str]
):
    response = anonymous_client.request(method, path, headers=credential, content=b'{"id": "small",')
    assert response.status_code == 401
    assert response.json() == {
        "code": "unauthorized",
        "message": "missing or invalid operator token (Authorization: Bearer …)",
    }
    assert response.headers["www-authenticate"] == "Bearer"
    assert fake.calls == []


def test_the_operator_token_opens_only_the_operator_api(operator_client: TestClient, fake: FakeProvisioner):
    assert operator_client.get("/v1/flavours").status_code == 200
    assert operator_client.get("/api/flavours").status_code == 401
    assert operator_client.get("/v1/jobs", headers={"Authorization": "", "X-Auth-Token": OPERATOR_TOKEN}).is_success
    assert fake.calls == [("flavours",), ("jobs", None, None, 100, None)]


def test_jobs_are_listed_with_their_whole_record_and_the_filters_are_passed_on(
    operator_client: TestClient, jobs: FakeProvisioner
):
    listed = operator_client.get("/v1/jobs")
    assert listed.status_code == 200 and listed.json()[0] == CREATE_JOB and len(listed.json()) == 2
    running = operator_client.get("/v1/jobs", params={"state": "running", "instance_id": 100002, "limit": 5})
    assert [j["id"] for j in running.json()] == ["j-start"]
    assert jobs.calls == [("jobs", None, None, 100, None), ("jobs", JobState.RUNNING, 100002, 5, None)]


def test_workers_are_listed_with_their_heartbeat_and_running_jobs(operator_client: TestClient, fake: FakeProvisioner):
    fake.worker_rows = [worker_view("w-1", running_jobs=3)]
    listed = operator_client.get("/v1/workers")
    assert listed.status_code == 200
    assert listed.json() == [
        {
            "id": "w-1",
            "host": "worker-1",
            "pid": 4242,
            "slots": 2,
            "started_at": WHEN,
            "heartbeat_at": WHEN,
            "draining": False,
            "running_jobs": 3,
        }
    ]
    assert fake.calls == [("workers",)]


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 1001}, {"instance_id": -1}, {"instance_id": 10**30}, {"state": "finished"}],
)
def test_a_bad_job_query_is_400_invalid_request(operator_client: TestClient, fake: FakeProvisioner, params: dict):
    response = operator_client.get("/v1/jobs", params=params)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    assert fake.calls == []


def test_one_job_and_its_events_in_order_after_a_counter(operator_client: TestClient, jobs: FakeProvisioner):
    assert operator_client.get(f"/v1/jobs/{JOB_ID}").json() == CREATE_JOB
    events = operator_client.get(f"/v1/jobs/{JOB_ID}/events").json()
    assert [e["counter"] for e in events] == [1, 2, 3] and events[-1]["event"] == "playbook_on_stats"
    assert events[0] == {
        "counter": 1,
        "event": "runner_on_ok",
        "task": "Converge the VM",
        "changed": True,
        "stdout": "changed: [vm]",
        "data": {"host": "vm"},
        "created_at": WHEN,
    }
    later = operator_client.get(f"/v1/jobs/{JOB_ID}/events", params={"after": 1, "limit": 1}).json()
    assert [e["counter"] for e in later] == [2]
    assert jobs.calls == [
        ("job", JOB_ID, None),
        ("job_events", JOB_ID, -1, 1000, None),
        ("job_events", JOB_ID, 1, 1, None),
    ]


@pytest.mark.usefixtures("jobs")
@pytest.mark.parametrize("path", ["/v1/jobs/no-such-job", "/v1/jobs/no-such-job/events"])
def test_an_unknown_job_is_404_not_found(operator_client: TestClient, path: str):
    response = operator_client.get(path)
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "job 'no-such-job' does not exist"}


def test_cancel_answers_202_with_the_job_and_404_for_an_unknown_one(operator_client: TestClient, jobs: FakeProvisioner):
    accepted = operator_client.post("/v1/jobs/j-start/cancel")
    assert accepted.status_code == 202 and accepted.json()["id"] == "j-start"
    assert accepted.json()["state"] == "running"
    unknown = operator_client.post("/v1/jobs/no-such-job/cancel")
    assert unknown.status_code == 404
    assert unknown.json() == {"code": "not_found", "message": "job 'no-such-job' does not exist"}
    assert jobs.calls == [("cancel", "j-start", None), ("cancel", "no-such-job", None)]


def test_flavours_are_listed_replaced_and_deleted(operator_client: TestClient):
    assert operator_client.get("/v1/flavours").json() == [SMALL]
    gpu = {"id": "gpu", "name": "GPU", "cpus": 8, "ram_mb": 65536, "disk_gb": 100, "full_clone": False}
    stored = operator_client.put("/v1/flavours/gpu", json=gpu)
    assert (stored.status_code, stored.json()) == (200, gpu)
    deleted = operator_client.delete("/v1/flavours/small")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert operator_client.get("/v1/flavours").json() == [gpu]
    gone = operator_client.delete("/v1/flavours/small")
    assert (gone.status_code, gone.json()["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (
            SMALL | {"id": "medium"},
            {"code": "bad_request", "message": "the flavour id in the body differs from the path"},
        ),
        (SMALL | {"gpus": 1}, None),
        (SMALL | {"cpus": 0}, None),
        (SMALL | {"name": "n\u0000"}, None),
    ],
)
def test_a_bad_flavour_is_400_and_changes_nothing(
    operator_client: TestClient, fake: FakeProvisioner, body: dict, answer: dict | None
):
    response = operator_client.put("/v1/flavours/small", json=body)
    assert response.status_code == 400
    if answer is None:
        assert response.json()["code"] == "invalid_request"
    else:
        assert response.json() == answer
    assert fake.calls == [] and set(fake.flavour_rows) == {"small"}


def test_health_needs_no_token_and_readiness_follows_the_cluster_view(
    anonymous_client: TestClient, fake: FakeProvisioner
):
    assert anonymous_client.get("/healthz").json() == {"status": "ok"}
    ready = anonymous_client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    fake.cluster.current = None
    degraded = anonymous_client.get("/readyz")
    assert (degraded.status_code, degraded.json()) == (503, {"status": "degraded", "proxmox": "unreachable or stale"})
    assert fake.calls == [("check_database",), ("check_database",)]


def test_readiness_needs_a_worker_alive(anonymous_client: TestClient, fake: FakeProvisioner):
    fake.alive_workers = 0
    degraded = anonymous_client.get("/readyz")
    assert (degraded.status_code, degraded.json()) == (503, {"status": "degraded", "workers": "none alive: jobs wait"})
