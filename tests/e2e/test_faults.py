"""Proxmox misbehaving on purpose (the simulator's faults, simulator/faults.py): for each fault the job retries or
the instance shows ERROR with a fault naming the cause, GET instance never answers 5xx, and nothing is orphaned once
the fault clears."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from simulator import start_simulator
from tests.conftest import LiveService, start_service, visa_body, wait_for
from tests.helpers.faults import control

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]

SCALE = 0.05  # real seconds per PVE second


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    handle = start_simulator(tmp_path_factory.mktemp("faulty-simulator"), time_scale=SCALE, boot_secs=10)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, sim: Any) -> Iterator[LiveService]:
    live = start_service(tmp_path_factory.mktemp("faulted"), sim, stale_after_s=3.0, delete_error_after_s=10)
    yield live
    live.stop()


@pytest.fixture(autouse=True)
def no_fault_left(sim: Any) -> Iterator[None]:
    yield
    assert control(sim, "DELETE").status_code == 200


def never_5xx(service: LiveService, instance_id: str) -> dict[str, Any]:
    for path in (f"/api/instances/{instance_id}", "/api/instances", "/api/instances/identifiers"):
        response = service.client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
    return service.instance(instance_id)


def created(service: LiveService, name: str) -> str:
    response = service.client.post("/api/instances", json=visa_body(name))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def settled(service: LiveService, instance_id: str, timeout: float = 120) -> dict[str, Any]:
    """The instance once it is ACTIVE or ERROR, asserting GET never failed on the way."""
    return wait_for(
        lambda: (body := never_5xx(service, instance_id))["state"] in ("ACTIVE", "ERROR") and body,
        timeout=timeout,
        what=f"instance {instance_id} to settle",
    )


def gone_after_delete(service: LiveService, sim: Any, instance_id: str) -> None:
    assert service.client.delete(f"/api/instances/{instance_id}").status_code == 200
    wait_for(lambda: sim.sim.vm(int(instance_id)) is None, timeout=120, what=f"VM {instance_id} to be deleted")
    wait_for(
        lambda: service.client.get(f"/api/instances/{instance_id}").status_code == 404,
        timeout=60,
        what=f"instance {instance_id} to be gone",
    )


def test_faults_are_switched_on_and_off_by_an_authenticated_client(sim: Any):
    assert control(sim, "POST", {"fault": "slow", "seconds": 0}, auth=False).status_code == 401
    refused = control(sim, "POST", {"fault": "melt"})
    assert refused.status_code == 400 and "must be one of" in refused.json()["message"]
    assert control(sim, "POST", {"fault": "lock", "vmid": 4242, "seconds": 1}).status_code == 400
    assert control(sim, "POST", {"fault": "error", "method": "POST", "path": "/clone", "times": 0}).status_code == 400
    assert control(sim, "POST", {"fault": "node_offline", "node": "pve2"}).json()["data"] == "node pve2 offline"
    assert control(sim, "GET").json()["data"] == ["node pve2 offline"]
    assert control(sim, "DELETE").status_code == 200
    assert control(sim, "GET").json()["data"] == [] and sim.sim.nodes["pve2"]["online"]


def test_a_vm_locked_by_another_task_is_powered_once_the_lock_is_released(service: LiveService, sim: Any):
    instance_id = created(service, "VISA-INSTANCE-LOCK")
    assert settled(service, instance_id)["state"] == "ACTIVE"
    assert control(sim, "POST", {"fault": "lock", "vmid": int(instance_id), "seconds": 100}).status_code == 200
    assert service.client.post(f"/api/instances/{instance_id}/shutdown").status_code == 200
    wait_for(lambda: never_5xx(service, instance_id)["state"] == "STOPPED", timeout=120, what="the shutdown")
    gone_after_delete(service, sim, instance_id)


def test_a_start_task_that_fails_once_is_retried(service: LiveService, sim: Any):
    once = {"fault": "task_error", "method": "POST", "path": "/status/start", "error": "start_failed", "times": 1}
    assert control(sim, "POST", once).status_code == 200
    instance_id = created(service, "VISA-INSTANCE-START-ONCE")
    assert settled(service, instance_id)["state"] == "ACTIVE"
    assert ("POST", "/status/start") not in sim.sim.failures  # it did fail once
    gone_after_delete(service, sim, instance_id)


def test_a_start_task_that_keeps_failing_is_an_error_naming_it_and_deletes_cleanly(service: LiveService, sim: Any):
    body = {"fault": "task_error", "method": "POST", "path": "/status/start", "error": "start_failed"}
    assert control(sim, "POST", body).status_code == 200
    instance_id = created(service, "VISA-INSTANCE-START-FAILS")
    failed = settled(service, instance_id, timeout=180)
    assert failed["state"] == "ERROR" and "start failed" in failed["fault"]["details"].lower(), failed
    control(sim, "DELETE")
    gone_after_delete(service, sim, instance_id)


def test_a_clone_refused_with_5xx_is_an_error_naming_it_and_leaves_no_vm(service: LiveService, sim: Any):
    body = {"fault": "error", "method": "POST", "path": "/clone", "status": 500, "message": "storage on fire"}
    assert control(sim, "POST", body).status_code == 200
    instance_id = created(service, "VISA-INSTANCE-CLONE")
    failed = settled(service, instance_id)
    assert failed["state"] == "ERROR" and "storage on fire" in failed["fault"]["details"], failed
    assert sim.sim.vm(int(instance_id)) is None
    control(sim, "DELETE")
    assert service.client.delete(f"/api/instances/{instance_id}").status_code == 200
    wait_for(lambda: service.client.get(f"/api/instances/{instance_id}").status_code == 404, timeout=60)


def test_a_slow_proxmox_slows_creates_but_never_reads(service: LiveService, sim: Any):
    assert control(sim, "POST", {"fault": "slow", "seconds": 10}).status_code == 200  # 0.5 s per answer
    instance_id = created(service, "VISA-INSTANCE-SLOW")
    assert settled(service, instance_id, timeout=240)["state"] == "ACTIVE"
    control(sim, "DELETE")
    gone_after_delete(service, sim, instance_id)


def test_an_unreachable_proxmox_refuses_creates_and_reads_say_unknown_until_it_is_back(service: LiveService, sim: Any):
    instance_id = created(service, "VISA-INSTANCE-UNREACHABLE")
    assert settled(service, instance_id)["state"] == "ACTIVE"
    assert control(sim, "POST", {"fault": "refuse"}).status_code == 200
    wait_for(lambda: never_5xx(service, instance_id)["state"] == "UNKNOWN", timeout=60, what="the stale view")
    refused = service.client.post("/api/instances", json=visa_body("VISA-INSTANCE-NOT-NOW"))
    assert refused.status_code == 503 and refused.json()["code"] == "backend_unavailable"
    control(sim, "DELETE")
    wait_for(lambda: never_5xx(service, instance_id)["state"] == "ACTIVE", timeout=60, what="the view to recover")
    gone_after_delete(service, sim, instance_id)


def test_a_node_offline_keeps_its_instances_readable_and_new_ones_go_elsewhere(service: LiveService, sim: Any):
    assert control(sim, "POST", {"fault": "node_offline", "node": "pve2"}).status_code == 200
    wait_for(lambda: not service.runtime.cluster.snapshot().nodes["pve2"].online, timeout=30, what="pve2 offline")
    instance_id = created(service, "VISA-INSTANCE-OFFLINE")
    assert settled(service, instance_id)["state"] == "ACTIVE"
    assert service.stored(instance_id).node == "pve1"
    control(sim, "DELETE")
    gone_after_delete(service, sim, instance_id)
