"""Authentication wherever the service is reached: under a root path or a mount prefix."""

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
from tests.test_visa_contract import ROUTES


@pytest.fixture(scope="module")
def prefixed(tmp_path_factory: pytest.TempPathFactory, simulator: Any) -> Iterator[LiveService]:
    """The service as `uvicorn --root-path /visa` serves it behind a proxy that strips the prefix."""
    live = start_service(tmp_path_factory.mktemp("prefixed"), simulator, root_path="/visa")
    yield live
    live.stop()


def mounted(tmp_path: Path) -> Starlette:
    """The application mounted under /provider in another one, never started: every route that reaches the service
    fails, as when its store is gone."""
    settings = Settings(  # type: ignore[call-arg]
        auth_token=TOKEN, operator_token=OPERATOR_TOKEN, state_dir=tmp_path, discovery_enabled=False
    )
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
    for method, path in ROUTES:
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
