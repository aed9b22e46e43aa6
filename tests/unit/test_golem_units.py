"""The Golem listener's parts that need no service: the per-address rate limit, and the forward table."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from api.golem.app import PerClientLimit
from api.golem.ratelimit import RateLimit
from engine.db import Database
from engine.forwards import Forwards, ForwardTarget
from engine.models import Forward, Instance, Lifecycle
from tests.helpers.store import provisioned


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_client_gets_its_burst_then_one_request_per_share_of_the_minute() -> None:
    clock = Clock()
    limit = RateLimit(60, clock=clock)
    assert [limit.take("198.51.100.1") for _ in range(60)] == [0.0] * 60
    assert limit.take("198.51.100.1") == pytest.approx(1.0)
    assert limit.take("198.51.100.2") == 0.0, "each address has its own bucket"
    clock.now += 1.0
    assert limit.take("198.51.100.1") == 0.0 and limit.take("198.51.100.1") > 0
    clock.now += 120
    assert [limit.take("198.51.100.1") for _ in range(60)] == [0.0] * 60, "an idle minute fills the bucket"


def test_a_client_over_the_limit_gets_a_429_with_retry_after_and_reaches_nothing() -> None:
    reached = []

    async def ok(_request: object) -> PlainTextResponse:
        reached.append(1)
        return PlainTextResponse("ok")

    app = PerClientLimit(Starlette(routes=[Route("/", ok)]), RateLimit(2))

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://golem") as client:
            return [await client.get("/") for _ in range(3)]

    answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [200, 200, 429] and len(reached) == 2
    assert answers[2].json() == {"detail": "too many requests from this address"}
    assert int(answers[2].headers["retry-after"]) >= 1


def golem_vm(db: Database, vmid: int, address: str | None = None, owner: str = "golem") -> None:
    provisioned(db, vmid)
    with db.session() as session:
        instance = session.get_one(Instance, vmid)
        instance.owner, instance.address = owner, address


def test_each_golem_vm_gets_the_lowest_free_port_once_and_a_deleted_vms_port_is_free_again(db: Database) -> None:
    forwards = Forwards(db, "golem", range(50800, 50803))
    golem_vm(db, 101, "198.18.0.5")
    golem_vm(db, 102)
    golem_vm(db, 103, "198.18.0.7", owner="alice")  # not Golem's: no port
    first = forwards.sync()
    assert first == {
        50800: ForwardTarget(50800, 101, "198.18.0.5", up=True),
        50801: ForwardTarget(50801, 102, None, up=True),
    }
    assert forwards.sync() == first, "a sync that changes nothing keeps every port"
    with db.session() as session:
        session.get_one(Instance, 101).lifecycle = Lifecycle.DELETED
    golem_vm(db, 104, "198.18.0.9")
    assert forwards.sync() == {
        50800: ForwardTarget(50800, 104, "198.18.0.9", up=True),  # 101's port, released, is the lowest free one
        50801: ForwardTarget(50801, 102, None, up=True),
    }
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Forward)) == 2
    assert forwards.port_of(104) == 50800 and forwards.port_of(101) is None


def test_a_vm_being_deleted_keeps_its_port_unforwarded_and_a_vm_with_no_port_free_waits_for_it(db: Database) -> None:
    forwards = Forwards(db, "golem", range(50800, 50801))
    golem_vm(db, 101, "198.18.0.5")
    with db.session() as session:
        session.get_one(Instance, 101).lifecycle = Lifecycle.DELETING
    assert forwards.sync() == {50800: ForwardTarget(50800, 101, "198.18.0.5", up=False)}
    golem_vm(db, 102, "198.18.0.6")
    assert forwards.sync() == {50800: ForwardTarget(50800, 101, "198.18.0.5", up=False)}
    with db.session() as session:
        session.get_one(Instance, 101).lifecycle = Lifecycle.DELETED
    assert forwards.sync() == {50800: ForwardTarget(50800, 102, "198.18.0.6", up=True)}
