"""A working VM is never reported as failed because the discovery registry was down: the create's VM is ACTIVE,
the job names the step that failed, and the reconciler registers the VM once the registry answers again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.models import Instance
from tests.conftest import start_service, start_test_registry, visa_body, wait_for
from tests.helpers.faults import FaultyProxy

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]


def registered(registry_url: str, name: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{registry_url}/api/v1/hosts", params={"name": name})
    answer.raise_for_status()
    return answer.json()  # type: ignore[no-any-return]


def test_a_create_while_the_registry_is_down_is_active_and_registered_later(tmp_path: Path, simulator: Any):
    registry = start_test_registry(tmp_path / "registry")
    proxy = FaultyProxy(registry.url)
    proxy.failing = True
    service = start_service(tmp_path / "service", simulator, discovery_enabled=True, discovery_url=proxy.url)
    try:
        created = service.client.post("/api/instances", json=visa_body("VISA-INSTANCE-REG")).json()
        body = service.wait_state(created["id"], "ACTIVE", timeout=180)
        assert body["address"] and proxy.refused >= 4  # the module tried again before giving up

        stored: Instance = service.stored(created["id"])
        assert stored.registration_pending
        [job] = service.operator.get("/v1/jobs", params={"instance_id": created["id"]}).json()
        assert (job["kind"], job["state"]) == ("create", "failed")
        assert "discovery registry" in job["error"] and job["result"]["failed_task"].startswith("Register")

        proxy.failing = False
        hosts = wait_for(lambda: registered(registry.url, stored.vm_name), timeout=120, what="the registration")
        assert hosts[0]["address"] == body["address"]
        wait_for(lambda: not service.stored(created["id"]).registration_pending, timeout=30, what="the flag")
        assert service.instance(created["id"])["state"] == "ACTIVE"
    finally:
        service.stop()
        proxy.close()
        registry.stop()
