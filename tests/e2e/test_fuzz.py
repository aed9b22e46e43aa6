"""Property-based fuzzing of the HTTP APIs from their own OpenAPI documents (schemathesis): whatever a client
sends, authenticated or not, no server error, and every answer matches its documented schema.

The service runs for real (store, intake, cluster view on the simulator) with no worker process, only a worker's
row that never claims, so the creates the fuzzer gets accepted stay queued instead of running playbooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from engine.store import Store
from tests.conftest import OPERATOR_TOKEN, TOKEN, LiveService, start_service, start_test_registry

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fuzz")]

CHECKS = [not_a_server_error, response_schema_conformance]
EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, simulator: Any) -> Iterator[LiveService]:
    service = start_service(tmp_path_factory.mktemp("fuzzed"), simulator, workers=0, worker_lost_after_s=86400)
    # A worker that is alive and takes nothing: /readyz answers ready, and the accepted creates stay queued.
    Store(service.runtime.db).register_worker("fuzz-stand-in", "nowhere", 0)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def service_schema(fuzzed: LiveService) -> Any:
    return schemathesis.openapi.from_url(f"{fuzzed.base}/openapi.json")


@pytest.fixture(scope="module")
def registry_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    registry = start_test_registry(tmp_path_factory.mktemp("fuzzed-registry"), rate_limit_per_minute=100000)
    yield schemathesis.openapi.from_url(f"{registry.url}/api/v1/openapi.json")
    registry.stop()


def credentials(path: str) -> dict[str, str]:
    if path.startswith("/api"):
        return {"X-Auth-Token": TOKEN}
    if path.startswith("/v1"):
        return {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    return {}


def fuzz(schema: Any, check: Callable[[Any], None]) -> int:
    """Every operation of the schema, EXAMPLES cases each of valid and of invalid input (wrong types, values out
    of range, NUL bytes, over-long strings…); the number of cases run."""
    operations = [result.ok() for result in schema.get_all_operations()]
    cases = 0
    for operation in operations:
        for mode in GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @EXAMPLES
            def run(case: Any) -> None:
                nonlocal cases
                cases += 1
                check(case)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid: an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE
    return cases


def test_the_service_never_fails_an_authenticated_client(service_schema: Any) -> None:
    cases = fuzz(service_schema, lambda case: case.call_and_validate(headers=credentials(case.path), checks=CHECKS))
    assert cases > 1000


def test_the_service_never_fails_an_anonymous_client(service_schema: Any) -> None:
    def anonymous(case: Any) -> None:
        response = case.call_and_validate(checks=[not_a_server_error])
        if case.path.startswith(("/api", "/v1")):
            assert response.status_code == 401, (case.method, case.path)

    assert fuzz(service_schema, anonymous) > 1000


def test_the_registry_never_fails_a_client(registry_schema: Any) -> None:
    assert fuzz(registry_schema, lambda case: case.call_and_validate(checks=CHECKS)) > 300
