"""Concurrent POST /api/instances on the live service: own ids, BUILDING at once, clean errors."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event

from tests.conftest import LiveService, start_service, visa_body

COUNT = 25


@pytest.fixture(scope="module")
def quiet_service(tmp_path_factory: pytest.TempPathFactory, simulator: Any) -> Iterator[LiveService]:
    """Jobs wait for a 10 s batch window, so no playbook runs while these short tests do."""
    live = start_service(tmp_path_factory.mktemp("burst"), simulator, batch_window_ms=10000, max_batch=200)
    yield live
    live.stop()


def identifiers(service: LiveService) -> list[dict[str, str]]:
    return service.client.get("/api/instances/identifiers").json()


def test_concurrent_creates_each_answer_their_own_id_and_an_immediate_get_says_building(quiet_service: LiveService):
    def create_then_get(n: int) -> tuple[str, dict[str, Any]]:
        body = visa_body(name=f"VISA-INSTANCE-{700 + n}")
        response = quiet_service.client.post("/api/instances", json=body)
        assert response.status_code == 201, response.text
        instance_id = response.json()["id"]
        return instance_id, quiet_service.instance(instance_id)

    with ThreadPoolExecutor(COUNT) as pool:
        answers = list(pool.map(create_then_get, range(COUNT)))
    assert len({instance_id for instance_id, _ in answers}) == COUNT
    for n, (instance_id, body) in enumerate(answers):
        assert (body["id"], body["name"], body["state"]) == (instance_id, f"VISA-INSTANCE-{700 + n}", "BUILDING")


def test_bad_creates_among_concurrent_good_ones_get_their_own_400(quiet_service: LiveService):
    bodies = [
        (201, None, visa_body(name="VISA-INSTANCE-801")),
        (400, "unknown_flavour", visa_body(name="VISA-INSTANCE-802", flavour="huge")),
        (201, None, visa_body(name="VISA-INSTANCE-803")),
        (400, "unknown_image", visa_body(name="VISA-INSTANCE-804", image="4242")),
        (400, "unknown_security_group", visa_body(name="VISA-INSTANCE-805", securityGroups=["nope"])),
        (201, None, visa_body(name="VISA-INSTANCE-806")),
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: quiet_service.client.post("/api/instances", json=b[2]), bodies))
    for (status, code, _), response in zip(bodies, responses, strict=True):
        assert response.status_code == status, response.text
        if code:
            assert response.json()["code"] == code
    listed = {i["name"] for i in identifiers(quiet_service)}
    assert {"VISA-INSTANCE-801", "VISA-INSTANCE-803", "VISA-INSTANCE-806"} <= listed
    assert not {"VISA-INSTANCE-802", "VISA-INSTANCE-804", "VISA-INSTANCE-805"} & listed


def test_a_store_failure_answers_503_with_the_stable_envelope_and_creates_nothing(quiet_service: LiveService):
    def fail(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("INSERT INTO jobs"):
            raise sqlite3.OperationalError("disk I/O error")

    before = identifiers(quiet_service)
    engine = quiet_service.runtime.db.engine
    event.listen(engine, "before_cursor_execute", fail)
    try:
        response = quiet_service.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-900"))
    finally:
        event.remove(engine, "before_cursor_execute", fail)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "store_unavailable" and response.json()["message"]
    assert "disk I/O" not in response.text
    assert identifiers(quiet_service) == before
    after = quiet_service.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-901"))
    assert after.status_code == 201, "creates work again once the store does"
