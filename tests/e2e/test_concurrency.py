"""Concurrent creates: distinct VMIDs, seeds and addresses; every one ACTIVE; nothing crossed between requests."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import LiveService, visa_body, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]
COUNT = 20


def test_twenty_concurrent_creates(service: LiveService, simulator: Any):
    def create(n: int) -> tuple[int, str]:
        body = visa_body(name=f"VISA-INSTANCE-{500 + n}", flavour="small")
        body["metadata"]["id"] = str(500 + n)
        response = service.client.post("/api/instances", json=body)
        assert response.status_code == 201, response.text
        return n, response.json()["id"]

    with ThreadPoolExecutor(COUNT) as pool:
        created = dict(pool.map(create, range(COUNT)))
    ids = list(created.values())
    assert len(set(ids)) == COUNT

    def all_active() -> bool:
        bodies = [service.instance(i) for i in ids]
        faults = [b["fault"] for b in bodies if b["state"] == "ERROR"]
        assert not faults, faults[0]
        return all(b["state"] == "ACTIVE" for b in bodies)

    wait_for(all_active, timeout=300, interval=1.0, what="20 instances ACTIVE")
    bodies = {n: service.instance(i) for n, i in created.items()}
    assert len({b["address"] for b in bodies.values()}) == COUNT
    seeds = set()
    for n, instance_id in created.items():
        vm = simulator.sim.vm(int(instance_id))
        assert vm.name == f"VISA-INSTANCE-{500 + n}" == bodies[n]["name"]
        serial = dict(p.split("=", 1) for p in vm.config["smbios1"].split(","))["serial"]
        seeds.add(base64.b64decode(serial).decode())
        run = simulator.sim.last_cloud_init(int(instance_id))
        assert run is not None and run.datasource == "NoCloudNet"
        assert f"id: '{500 + n}'" in run.body("meta-data"), "each VM got its own request's metadata"
    assert len(seeds) == COUNT
