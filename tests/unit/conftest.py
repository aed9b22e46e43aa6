"""The HTTP seam: the service's application as `provisioner.runtime.build_app` makes it, without the runtime (no
database, no simulator, no job worker), its routes answering from a FakeProvisioner, called through starlette's
TestClient in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from engine.settings import Settings
from provisioner.runtime import build_app
from tests.conftest import OPERATOR_TOKEN, TOKEN
from tests.helpers.fake_provisioner import FakeProvisioner


@pytest.fixture
def fake() -> FakeProvisioner:
    return FakeProvisioner()


@pytest.fixture
def app(fake: FakeProvisioner, tmp_path: Path) -> FastAPI:
    """Both APIs with their tokens; the routes find the fake where the runtime's lifespan puts the service."""
    settings = Settings(  # type: ignore[call-arg]
        auth_token=TOKEN, operator_token=OPERATOR_TOKEN, state_dir=tmp_path, discovery_enabled=False
    )
    application = build_app(settings)
    application.state.provisioner = fake
    return application


def client(app: FastAPI, headers: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(app, headers=headers) as test_client:
        yield test_client


@pytest.fixture
def visa_client(app: FastAPI) -> Iterator[TestClient]:
    """Sends VISA's X-Auth-Token."""
    yield from client(app, {"X-Auth-Token": TOKEN})


@pytest.fixture
def operator_client(app: FastAPI) -> Iterator[TestClient]:
    """Sends the operator's bearer token."""
    yield from client(app, {"Authorization": f"Bearer {OPERATOR_TOKEN}"})


@pytest.fixture
def anonymous_client(app: FastAPI) -> Iterator[TestClient]:
    yield from client(app, {})
