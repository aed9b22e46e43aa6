"""A restart loses no accepted work and duplicates no VM: interrupted jobs resume on the same VMID."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.models import Job, JobState
from tests.conftest import start_service, visa_body, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]


def job_states(service: Any, instance_id: str) -> list[str]:
    with service.runtime.db.session() as session:
        return [j.state for j in session.query(Job).filter(Job.instance_id == int(instance_id))]


def test_a_create_interrupted_by_a_restart_finishes_after_it(tmp_path: Path, simulator: Any):
    first = start_service(tmp_path, simulator)
    try:
        instance_id = first.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-77")).json()["id"]
        wait_for(
            lambda: JobState.RUNNING in job_states(first, instance_id),
            timeout=30,
            interval=0.05,
            what="the create job to start",
        )
    finally:
        first.stop()
    with first.runtime.db.session() as session:
        job = session.query(Job).filter(Job.instance_id == int(instance_id)).one()
        assert job.state == JobState.PENDING, "the interrupted job went back to the queue"
    second = start_service(tmp_path, simulator)
    try:
        assert second.instance(instance_id)["state"] == "BUILDING"
        second.wait_state(instance_id, "ACTIVE")
        same_name = [vm for vm in simulator.sim.vms if vm.name == "VISA-INSTANCE-77"]
        assert [vm.vmid for vm in same_name] == [int(instance_id)]
    finally:
        second.stop()
