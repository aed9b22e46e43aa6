"""The Golem-compatible listener on the simulator's emulated guests: the requestor CLI's routes, shapes and status
codes (shared notes: golem-compat), the VMs it makes as ordinary instances, its caps, and the SSH forwards' ports.

Emulated guests have no SSH: nothing here connects to a forward (tests/e2e/test_golem_real_guests.py does)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import USER_KEY, LiveService, start_service, wait_for
from tests.helpers.golem import free_ports, golem_settings, listening

pytestmark = pytest.mark.slow
RSA_KEY = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7vbqajDhA0m9mLt3f6l6nE2QEX4wW0kXHn8n0m3GJ2Kq1DGdj9w0T4c2hyCq3wUX8I4qJq7x"
)


@pytest.fixture(scope="module")
def ports() -> range:
    return free_ports(6)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, simulator: Any, ports: range) -> Iterator[LiveService]:
    live = start_service(
        tmp_path_factory.mktemp("service"),
        simulator,
        **golem_settings(ports, golem_max_vms=2, golem_rate_limit=100_000),
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def golem(service: LiveService, ports: range) -> Iterator[httpx.Client]:
    assert service.settings.golem_port == ports[0]
    with httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", timeout=120) as client:
        yield client


def body(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "resources": {"cpu": 2, "memory": 4, "storage": 20}, "ssh_key": USER_KEY, **extra}


def test_the_provider_info_is_what_the_cli_reads(golem: httpx.Client, service: LiveService) -> None:
    info = golem.get("/api/v1/provider/info").json()
    assert info == {
        "provider_id": service.settings.provider_id,
        "stream_payment_address": "0x" + "0" * 40,
        "glm_token_address": "0x" + "0" * 40,
        "ip_address": "127.0.0.1",
        "country": service.settings.provider_country,
        "platform": "x86_64",
    }


def test_an_async_create_runs_with_a_forward_then_stops_starts_and_is_deleted(
    golem: httpx.Client, service: LiveService, ports: range
) -> None:
    created = golem.post("/api/v1/vms", params={"async": "true"}, json=body("vm-async", stream_id=0))
    assert created.status_code == 202, created.text
    job = created.json()
    assert job.keys() == {"job_id", "vm_id", "status"} and (job["vm_id"], job["status"]) == ("vm-async", "creating")
    early = golem.get("/api/v1/vms/vm-async/access")
    assert early.status_code == 202 and early.json()["ssh_port"] is None and early.json()["status"] == "creating"

    def job_ended() -> dict[str, Any] | None:
        answer = golem.get(f"/api/v1/vms/jobs/{job['job_id']}")
        assert answer.status_code == 200, answer.text
        return answer.json() if answer.json()["status"] != "creating" else None

    ready = wait_for(job_ended, what="the create job")
    assert ready["status"] == "ready" and ready["vm_id"] == "vm-async" and ready["error"] is None
    vm = golem.get("/api/v1/vms/vm-async").json()
    assert vm["status"] == "running" and vm["ssh_port"] in ports[1:] and listening(vm["ssh_port"])
    assert vm["resources"] == {"cpu": 2, "memory": 4, "storage": 20} and vm["ip_address"] == "127.0.0.1"
    assert vm["id"] == vm["name"] == "vm-async" and vm["error_message"] is None
    access = golem.get("/api/v1/vms/vm-async/access")
    assert access.status_code == 200
    assert access.json() == {"ssh_host": "127.0.0.1", "ssh_port": vm["ssh_port"], "vm_id": "vm-async",
                             "multipass_name": access.json()["multipass_name"]}  # fmt: skip
    vmid = access.json()["multipass_name"]

    # An ordinary instance: /v1 shows it (owner golem, user ubuntu, on a lease), VISA does not.
    seen = service.operator.get(f"/v1/vms/{vmid}").json()
    assert (seen["owner"], seen["ssh"]["user"]) == ("golem", "ubuntu")
    ends = datetime.fromisoformat(seen["expires_at"]) - datetime.now(UTC)
    assert timedelta(minutes=58) < ends <= timedelta(hours=1)
    assert service.client.get(f"/api/instances/{vmid}").status_code == 404
    assert [v["name"] for v in golem.get("/api/v1/vms").json()] == ["vm-async"]

    stopped = golem.post("/api/v1/vms/vm-async/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    started = golem.post("/api/v1/vms/vm-async/start")
    assert started.status_code == 200, started.text
    wait_for(lambda: golem.get("/api/v1/vms/vm-async").json()["status"] == "running")

    stream = golem.get("/api/v1/vms/vm-async/stream")
    assert (stream.status_code, stream.json()) == (400, {"detail": "streaming payments not enabled on this provider"})
    keyed = golem.post("/api/v1/vms/vm-async/ssh-keys", json={"key": RSA_KEY + " x@y", "name": "laptop"})
    assert keyed.status_code in (200, 422), keyed.text  # a short RSA key is refused by our own validation

    deleted = golem.delete("/api/v1/vms/vm-async")
    assert (deleted.status_code, deleted.content) == (200, b"")
    wait_for(lambda: golem.get("/api/v1/vms/vm-async").status_code == 404, timeout=120)
    assert golem.get("/api/v1/vms/vm-async").json() == {"detail": "VM vm-async not found"}
    wait_for(lambda: not listening(vm["ssh_port"]), what="the forward to close")
    assert golem.delete("/api/v1/vms/vm-async").status_code == 200, "an unknown VM is deleted already"
    actions = {e["action"] for e in service.operator.get("/v1/audit", params={"actor": "golem"}).json()["entries"]}
    assert {"golem_create_vm", "golem_stop_vm", "golem_start_vm", "golem_delete_vm"} <= actions
    entry = service.operator.get("/v1/audit", params={"actor": "golem", "action": "golem_create_vm"}).json()
    assert entry["entries"][0]["client"] == "127.0.0.1"


def test_a_sync_create_answers_once_the_vm_runs_with_its_port(golem: httpx.Client) -> None:
    created = golem.post("/api/v1/vms", json={"name": "vm-sync", "size": "small", "ssh_key": USER_KEY})
    assert created.status_code == 200, created.text
    vm = created.json()
    assert vm["status"] == "running" and isinstance(vm["ssh_port"], int) and listening(vm["ssh_port"])
    assert vm["resources"] == {"cpu": 1, "memory": 1, "storage": 10}
    again = golem.post("/api/v1/vms", json={"name": "vm-sync", "size": "small", "ssh_key": USER_KEY})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    assert golem.delete("/api/v1/vms/vm-sync").status_code == 200
    wait_for(lambda: golem.get("/api/v1/vms/vm-sync").status_code == 404, timeout=120)


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (body("A"), 422),
        (body("ab"), 422),
        (body("a--b"), 422),
        (body("-abc"), 422),
        (body("vm-x", resources={"cpu": 3, "memory": 4, "storage": 20}), 422),
        (body("vm-x", resources={"cpu": 2, "memory": 3, "storage": 20}), 422),
        (body("vm-x", resources={"cpu": 2, "memory": 4, "storage": 5}), 422),
        (body("vm-x", ssh_key="ecdsa-sha2-nistp256 AAAA x"), 422),
        (body("vm-x", ssh_key="ssh-ed25519 not-base64"), 422),
        ({"name": "vm-x", "ssh_key": USER_KEY}, 422),  # no size, no resources
        (body("vm-x", resources={"cpu": 16, "memory": 4, "storage": 20}), 400),  # over the per-VM cap
        (body("vm-x", resources={"cpu": 2, "memory": 64, "storage": 20}), 400),
        (body("vm-x", resources={"cpu": 2, "memory": 4, "storage": 1000}), 400),
    ],
)
def test_bad_input_is_refused_as_upstream_does_and_makes_nothing(
    golem: httpx.Client, sent: dict[str, Any], status: int
) -> None:
    before = golem.get("/api/v1/vms").json()
    refused = golem.post("/api/v1/vms", json=sent)
    assert refused.status_code == status, refused.text
    assert "detail" in refused.json()
    assert golem.get("/api/v1/vms").json() == before


def test_the_cap_on_golem_vms_refuses_one_more(golem: httpx.Client) -> None:
    for name in ("vm-cap-1", "vm-cap-2"):
        assert golem.post("/api/v1/vms", params={"async": "true"}, json=body(name)).status_code == 202
    third = golem.post("/api/v1/vms", params={"async": "true"}, json=body("vm-cap-3"))
    assert third.status_code == 409 and "at most 2" in third.json()["detail"]
    for name in ("vm-cap-1", "vm-cap-2"):
        wait_for(lambda n=name: golem.get(f"/api/v1/vms/{n}").json()["status"] == "running", timeout=120)
        assert golem.delete(f"/api/v1/vms/{name}").status_code == 200
    for name in ("vm-cap-1", "vm-cap-2"):
        wait_for(lambda n=name: golem.get(f"/api/v1/vms/{n}").status_code == 404, timeout=120)


def test_only_the_golem_routes_answer(golem: httpx.Client) -> None:
    assert golem.get("/api/instances").status_code == 404, "VISA's API is not on this listener"
    assert golem.get("/v1/vms").status_code == 404, "nor the operator API"
    assert golem.post("/admin/shutdown").status_code == 404


def test_a_golem_vms_lease_ends_in_its_delete_and_frees_its_port(golem: httpx.Client, service: LiveService) -> None:
    assert golem.post("/api/v1/vms", params={"async": "true"}, json=body("vm-lease")).status_code == 202
    wait_for(lambda: golem.get("/api/v1/vms/vm-lease").json()["status"] == "running", timeout=120)
    vm = golem.get("/api/v1/vms/vm-lease").json()
    vmid = golem.get("/api/v1/vms/vm-lease/access").json()["multipass_name"]
    # Its lease ends now (as if its hour had passed, or passed while the service was down): the reconciler deletes it.
    service.runtime.store.set_lease(int(vmid), None, datetime.now(UTC) - timedelta(seconds=1))
    wait_for(lambda: golem.get("/api/v1/vms/vm-lease").status_code == 404, timeout=120, what="the lease to end")
    wait_for(lambda: not listening(vm["ssh_port"]), what="its forward to close")
    jobs = service.operator.get("/v1/jobs", params={"instance_id": vmid}).json()
    assert {j["kind"] for j in jobs} == {"create", "delete"}


def test_concurrent_creates_of_one_name_make_one_vm(golem: httpx.Client) -> None:
    def create(_: int) -> int:
        return golem.post("/api/v1/vms", params={"async": "true"}, json=body("vm-race")).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(create, range(4)))
    assert codes == [202, 409, 409, 409], codes
    assert [v["name"] for v in golem.get("/api/v1/vms").json()].count("vm-race") == 1
    wait_for(lambda: golem.get("/api/v1/vms/vm-race").json()["status"] == "running", timeout=120)
    assert golem.delete("/api/v1/vms/vm-race").status_code == 200
    wait_for(lambda: golem.get("/api/v1/vms/vm-race").status_code == 404, timeout=120)
