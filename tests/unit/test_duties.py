"""Duties done once for all API processes (engine/duties.py): the lease, and the reconciler and advertiser that
act only while their process holds it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from engine.advertiser import Advertiser
from engine.db import Database
from engine.duties import DutyLease
from engine.models import Duty, utcnow
from engine.reconciler import Reconciler
from engine.seeds import SeedTokens
from engine.settings import Settings
from engine.store import Store


def expire(db: Database, name: str) -> None:
    with db.session() as session:
        session.get_one(Duty, name).expires_at = utcnow() - timedelta(seconds=1)


def test_one_holder_at_a_time_until_its_lease_runs_out_or_it_lets_go(db: Database):
    store = Store(db)
    assert store.hold_duty("reconciler", "api-1", 30)
    assert store.hold_duty("reconciler", "api-1", 30)  # renewed
    assert not store.hold_duty("reconciler", "api-2", 30)
    assert store.hold_duty("advertiser", "api-2", 30)  # another duty is another lease
    expire(db, "reconciler")  # api-1 died: it stopped renewing
    assert store.hold_duty("reconciler", "api-2", 30)
    assert not store.hold_duty("reconciler", "api-1", 30)
    store.release_duty("reconciler", "api-2")  # a clean stop hands it over at once
    assert store.hold_duty("reconciler", "api-1", 30)


class Cluster:
    def __init__(self) -> None:
        self.reads = 0

    def snapshot(self) -> None:
        self.reads += 1
        return None


def test_only_the_reconciler_holding_the_duty_reconciles(db: Database):
    settings = Settings(insecure_no_auth=True, provider_id="ab" * 32)  # type: ignore[call-arg]
    store, cluster = Store(db), Cluster()
    first, second = (
        Reconciler(store, SeedTokens(b"k" * 32), cluster, settings, duty=DutyLease(store, "reconciler", name, 30))  # type: ignore[arg-type]
        for name in ("api-1", "api-2")
    )
    assert first.tick() and not second.tick()
    assert cluster.reads == 1
    first.stop()  # releases the duty
    assert second.tick()


class Registry:
    def __init__(self) -> None:
        self.posted: list[Any] = []

    def advertise(self, advertisement: Any) -> None:
        self.posted.append(advertisement)

    def withdraw(self) -> None:
        self.posted.append(None)

    def close(self) -> None:
        pass


def test_only_the_advertiser_holding_the_duty_advertises_and_only_it_withdraws(db: Database):
    store, registries = Store(db), (Registry(), Registry())
    offer = {"resources": {"cpu": 4}}
    first, second = (
        Advertiser(registry, lambda: offer, 240, duty=DutyLease(store, "advertiser", name, 30))  # type: ignore[arg-type]
        for registry, name in zip(registries, ("api-1", "api-2"), strict=True)
    )
    first.tick()
    second.tick()
    assert registries[0].posted == [offer] and registries[1].posted == []
    second.stop()
    assert registries[1].posted == []  # it never advertised: it withdraws nothing
    first.stop()
    assert registries[0].posted == [offer, None]
