"""Authentication of both APIs: each takes only its own token, checked before routing or reading a body, wherever
the service is reached (under a root path, mounted under a prefix)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp

from engine.settings import Settings
from provisioner.runtime import Runtime, create_app
from tests.conftest import OPERATOR_TOKEN, TOKEN, LiveService, start_service
from tests.helpers.visa import ROUTES

OPERATOR_ROUTES = [
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/j-1"),
    ("GET", "/v1/jobs/j-1/events"),
    ("POST", "/v1/jobs/j-1/cancel"),
    ("GET", "/v1/flavours"),
    ("PUT", "/v1/flavours/small"),
    ("DELETE", "/v1/flavours/small"),
    ("GET", "/v1/no-such-route"),
    ("GET", "/v1"),
    ("DELETE", "/v1/jobs"),
    ("PATCH", "/v1/flavours/small"),
]
MALFORMED = b'{"id": "small",'
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def prefixed(tmp_path_factory: pytest.TempPathFactory, simulator: Any) -> Iterator[LiveService]:
    """The service as `uvicorn --root-path /visa` serves it behind a proxy that strips the prefix."""
    live = start_service(tmp_path_factory.mktemp("prefixed"), simulator, root_path="/visa")
    yield live
    live.stop()


def mounted(tmp_path: Path, **settings_values: Any) -> Starlette:
    """The application mounted under /provider in another one, never started: every route that reaches the service
    fails, as when its store is gone."""
    values = {"auth_token": TOKEN, "operator_token": OPERATOR_TOKEN, "state_dir": tmp_path, "discovery_enabled": False}
    settings = Settings(**(values | settings_values))
    return Starlette(routes=[Mount("/provider", app=create_app(Runtime(settings)))])


def call(app: ASGIApp, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    """One request to an ASGI application in this process; an unhandled error is its 500."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(send())


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_api_routes_need_the_token_under_a_root_path(prefixed: LiveService, method: str, path: str):
    response = prefixed.anonymous.request(method, path, json={})
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"


def test_the_token_opens_the_api_under_a_root_path(prefixed: LiveService):
    assert {i["id"] for i in prefixed.client.get("/api/images").json()} == {"9000", "9001"}


def test_api_routes_need_the_token_when_mounted_under_a_prefix(tmp_path: Path):
    app = mounted(tmp_path)
    for method, path in ROUTES + OPERATOR_ROUTES:
        response = call(app, method, "/provider" + path, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["code"] == "unauthorized"


def test_get_one_instance_never_answers_5xx_when_mounted_under_a_prefix(tmp_path: Path):
    app, token = mounted(tmp_path), {"X-Auth-Token": TOKEN}
    response = call(app, "GET", "/provider/api/instances/100042", token)
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "UNKNOWN" and response.json()["id"] == "100042"
    assert call(app, "GET", "/provider/api/instances", token).status_code == 500


def test_each_api_takes_only_its_own_token(service: LiveService):
    assert service.operator.get("/v1/jobs").status_code == 200
    assert service.client.get("/v1/jobs").status_code == 401
    assert service.anonymous.get("/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert service.client.get("/api/images").status_code == 200
    assert service.anonymous.get("/api/images", headers={"X-Auth-Token": OPERATOR_TOKEN}).status_code == 401


@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES)
@pytest.mark.parametrize(
    "credential", [{}, {"Authorization": "Bearer wrong-operator-token-0123"}, {"Authorization": OPERATOR_TOKEN}]
)
def test_every_operator_path_needs_the_token_before_routing_or_the_body(
    service: LiveService, method: str, path: str, credential: dict[str, str]
):
    """Known or not, any method, a malformed body: one 401, so nothing about the routes shows without the token."""
    response = service.anonymous.request(method, path, content=MALFORMED, headers=JSON | credential)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_with_the_operator_token_unknown_paths_are_404_wrong_methods_405_and_bodies_parsed(service: LiveService):
    unknown, wrong_method = service.operator.get("/v1/no-such-route"), service.operator.delete("/v1/jobs")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")
    response = service.operator.put("/v1/flavours/small", content=MALFORMED, headers=JSON)
    assert (response.status_code, response.json()["code"]) == (400, "malformed_json")
    assert service.anonymous.get("/v1/flavours", headers={"X-Auth-Token": OPERATOR_TOKEN}).status_code == 200


def test_without_the_operator_api_v1_is_not_served(tmp_path: Path):
    app = mounted(tmp_path, operator_api=False, operator_token=None)
    for headers in ({}, {"Authorization": f"Bearer {OPERATOR_TOKEN}"}):
        assert call(app, "GET", "/provider/v1/jobs", headers).status_code == 404
