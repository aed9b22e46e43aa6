"""The whole service on PostgreSQL: a VISA create to ACTIVE and a delete through the real playbooks, the service's and
the embedded registry's rows in PostgreSQL (each database empty at the start: the service migrates it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from discovery.models import Host
from discovery.settings import RegistrySettings
from engine.models import Instance, Job, JobEvent, JobKind, JobState, Lifecycle
from tests.conftest import start_service, visa_body, wait_for
from tests.helpers.postgres import TestPostgres

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]


def test_a_visa_instance_lives_and_dies_with_its_rows_in_postgresql(
    tmp_path: Path, simulator: Any, postgres: TestPostgres
):
    service_url, registry_url = postgres.new_database(migrated=False), postgres.new_database(migrated=False)
    registry = RegistrySettings(host="127.0.0.1", port=0, state_dir=tmp_path / "registry", database_url=registry_url)
    live = start_service(tmp_path, simulator, registry=registry, discovery_enabled=True, database_url=service_url)
    service_db, registry_db = create_engine(service_url), create_engine(registry_url)
    try:
        assert live.runtime.db.engine.dialect.name == "postgresql"
        created = live.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-5432"))
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        active = live.wait_state(instance_id, "ACTIVE")
        live.phoned_home(instance_id)
        with registry_db.connect() as connection:
            hosts = connection.execute(select(Host.name, Host.address, Host.instance_id)).all()
        assert [tuple(h) for h in hosts] == [("VISA-INSTANCE-5432", active["address"], instance_id)]

        assert live.client.delete(f"/api/instances/{instance_id}").status_code == 200
        wait_for(
            lambda: live.client.get(f"/api/instances/{instance_id}").status_code == 404, timeout=120, what="delete"
        )
        live.wait_idle()
        with service_db.connect() as connection:
            instance = connection.execute(select(Instance).where(Instance.id == int(instance_id))).one()
            jobs = connection.execute(select(Job.id, Job.kind, Job.state).where(Job.instance_id == instance.id)).all()
            events = connection.scalars(select(JobEvent.event).where(JobEvent.job_id.in_([j.id for j in jobs]))).all()
        assert instance.lifecycle == Lifecycle.DELETED and instance.deleted_at is not None
        assert instance.phoned_home_at is not None and instance.host_key
        assert instance.deleted_at.tzinfo is not None, "PostgreSQL gives aware datetimes"
        assert sorted((j.kind, j.state) for j in jobs) == [
            (JobKind.CREATE, JobState.SUCCESSFUL),
            (JobKind.DELETE, JobState.SUCCESSFUL),
        ]
        assert "playbook_on_stats" in events
        with registry_db.connect() as connection:
            assert connection.execute(select(Host.name)).all() == [], "deregistered"
        assert not list(tmp_path.rglob("*.db")), "no SQLite file"
    finally:
        live.stop()
        service_db.dispose()
        registry_db.dispose()
