"""Leases and idempotency keys in the store (both databases): a lease that ended, also while the service was down,
ends in a delete job at the next pass; a lease changed or removed; old idempotency keys forgotten."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from engine.db import Database
from engine.errors import NotFound
from engine.models import IdempotencyKey, Instance, Job, JobKind, Lifecycle
from engine.store import Store
from tests.helpers.store import add_instance, provisioned


def lifecycle(db: Database, vmid: int) -> str:
    with db.session() as session:
        return session.get_one(Instance, vmid).lifecycle


def test_an_ended_lease_deletes_its_instance_once_and_a_later_or_no_lease_does_not(db: Database):
    now = datetime.now(UTC)
    for vmid in (1, 2, 3):
        provisioned(db, vmid)
    add_instance(db, 4)  # still building: its lease counts too
    store = Store(db)
    store.set_lease(1, None, now - timedelta(hours=1))  # ended while the service was down
    store.set_lease(2, None, now + timedelta(hours=1))
    store.set_lease(4, None, now - timedelta(seconds=1))
    assert sorted(store.end_leases(now)) == [1, 4]
    assert store.end_leases(now) == [], "once"
    assert [lifecycle(db, vmid) for vmid in (1, 2, 3, 4)] == ["deleting", "provisioned", "provisioned", "deleting"]
    with db.session() as session:
        deletes = session.scalars(select(Job.instance_id).where(Job.kind == JobKind.DELETE)).all()
    assert sorted(deletes) == [1, 4]
    assert store.set_lease(2, None, None).expires_at is None
    assert store.end_leases(now + timedelta(days=1)) == []


def test_an_owner_scoped_lease_change_finds_only_the_owners_instance(db: Database):
    provisioned(db, 1)
    with db.session() as session:
        session.get_one(Instance, 1).owner = "alice"
    store = Store(db)
    later = datetime.now(UTC) + timedelta(hours=1)
    assert store.set_lease(1, "alice", later).expires_at is not None
    with pytest.raises(NotFound):
        store.set_lease(1, "bob", later)
    assert lifecycle(db, 1) == Lifecycle.PROVISIONED


def test_idempotency_keys_older_than_the_cutoff_are_forgotten(db: Database):
    now = datetime.now(UTC)
    with db.session() as session:
        for key, age in (("old", timedelta(hours=49)), ("new", timedelta(hours=1))):
            session.add(IdempotencyKey(owner="alice", key=key, body_hash="h", instance_id=1, created_at=now - age))
    Store(db).forget_idempotency_keys(now - timedelta(hours=48))
    with db.session() as session:
        assert session.scalars(select(IdempotencyKey.key)).all() == ["new"]
