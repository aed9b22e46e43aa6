"""The VISA routes over the HTTP seam (tests/unit/conftest.py): the exact bodies and status codes VISA reads, with a
fake service behind them."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.errors import (
    BackendUnavailable,
    InvalidSSHKeyError,
    NoCapacityError,
    ProvisionerError,
    QuotaExceeded,
    StoreUnavailable,
    UnknownFlavour,
    UnknownImage,
    UnknownSecurityGroup,
)
from engine.intake import CreateRequest
from engine.jobs.kinds import DELETE_FAULT
from engine.models import JobKind, Lifecycle
from tests.conftest import OPERATOR_TOKEN, TOKEN, visa_body
from tests.helpers.fake_provisioner import CREATED, FakeProvisioner, GiB, instance_view
from tests.helpers.visa import ROUTES, STATES
from web_provider.routes import SEED_OVERDUE
from web_provider.states import VisaState

WHEN = "2026-01-02T03:04:05.678Z"  # CREATED as VISA reads dates
ACTIVE = {
    "id": "100001",
    "name": "VISA-INSTANCE-100001",
    "state": "ACTIVE",
    "address": "198.18.0.5",
    "imageId": "9000",
    "flavourId": "small",
    "createdAt": WHEN,
    "securityGroups": ["default", "web"],
    "fault": None,
}


@pytest.fixture
def one_instance(fake: FakeProvisioner) -> FakeProvisioner:
    fake.instances[100001] = instance_view(100001, security_groups=["default", "web"])
    return fake


# --- authentication


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("credential", [{}, {"X-Auth-Token": TOKEN[:-1]}, {"X-Auth-Token": OPERATOR_TOKEN}])
def test_every_route_needs_the_token_before_the_service_is_asked(
    anonymous_client: TestClient, fake: FakeProvisioner, method: str, path: str, credential: dict[str, str]
):
    response = anonymous_client.request(method, path, headers=credential, json={})
    assert response.status_code == 401
    assert response.json() == {"code": "unauthorized", "message": "missing or invalid X-Auth-Token"}
    assert fake.calls == []


# --- instances


def test_list_get_and_identifiers_have_visas_exact_shapes(visa_client: TestClient, one_instance: FakeProvisioner):
    assert visa_client.get("/api/instances").json() == [ACTIVE]
    assert visa_client.get("/api/instances/100001").json() == ACTIVE
    assert visa_client.get("/api/instances/identifiers").json() == [{"id": "100001", "name": "VISA-INSTANCE-100001"}]
    assert one_instance.calls == [("views", "visa"), ("view", "100001", "visa"), ("views", "visa")]


def test_visa_s_twelve_states_are_the_uppercase_ones_we_send():
    assert {state.value for state in VisaState} == STATES


@pytest.mark.parametrize(
    ("view", "state"),
    [
        ({"lifecycle": Lifecycle.BUILDING, "active_job": JobKind.CREATE, "vm_status": None}, "BUILDING"),
        ({"active_job": JobKind.START, "vm_status": "stopped"}, "STARTING"),
        ({"address": None}, "STARTING"),
        ({}, "ACTIVE"),
        ({"vm_lock": "migrate"}, "ACTIVE_MIGRATING"),
        ({"active_job": JobKind.SHUTDOWN}, "STOPPING"),
        ({"vm_status": "stopped"}, "STOPPED"),
        ({"active_job": JobKind.REBOOT}, "REBOOTING"),
        ({"vm_status": "stopped", "vm_lock": "migrate"}, "MIGRATING"),
        ({"lifecycle": Lifecycle.ERROR, "fault_message": "clone failed"}, "ERROR"),
        ({"lifecycle": Lifecycle.DELETING, "active_job": JobKind.DELETE}, "DELETED"),
        ({"snapshot_ok": False}, "UNKNOWN"),
        ({"vm_status": None}, "UNKNOWN"),
    ],
)
def test_each_instance_state_reaches_visa_as_its_uppercase_value(
    visa_client: TestClient, fake: FakeProvisioner, view: dict[str, Any], state: str
):
    fake.instances[100001] = instance_view(100001, **view)
    assert state in STATES
    assert visa_client.get("/api/instances/100001").json()["state"] == state
    assert [i["state"] for i in visa_client.get("/api/instances").json()] == [state]


def test_an_instance_in_error_carries_its_fault(visa_client: TestClient, fake: FakeProvisioner):
    fake.instances[100001] = instance_view(
        100001,
        lifecycle=Lifecycle.ERROR,
        fault_message="clone failed",
        fault_details="storage on fire",
        fault_at=CREATED,
    )
    fake.instances[100002] = instance_view(100002, seed_overdue=True)
    fake.instances[100003] = instance_view(
        100003,
        lifecycle=Lifecycle.DELETING,
        delete_overdue=True,
        fault_message=DELETE_FAULT,
        fault_details="VM 100003 is locked (backup)",
        delete_requested_at=CREATED,
    )
    faults = {i["id"]: (i["state"], i["fault"]) for i in visa_client.get("/api/instances").json()}
    assert faults["100001"] == (
        "ERROR",
        {"message": "clone failed", "code": 500, "details": "storage on fire", "created": WHEN},
    )
    state, fault = faults["100002"]
    assert state == "ERROR" and (fault["message"], fault["code"], fault["created"]) == (SEED_OVERDUE, 500, WHEN)
    assert fault["details"].startswith("the guest at 198.18.0.5 is running but never phoned home")
    assert faults["100003"] == (
        "ERROR",
        {"message": DELETE_FAULT, "code": 500, "details": "VM 100003 is locked (backup)", "created": WHEN},
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/instances/199999"),
        ("DELETE", "/api/instances/199999"),
        ("POST", "/api/instances/199999/start"),
        ("POST", "/api/instances/199999/shutdown"),
        ("POST", "/api/instances/199999/reboot"),
        ("GET", "/api/instances/199999/security_groups"),
        ("GET", "/api/instances/abc"),
    ],
)
@pytest.mark.usefixtures("one_instance")
def test_unknown_instances_are_404_not_found(visa_client: TestClient, method: str, path: str):
    response = visa_client.request(method, path)
    assert response.status_code == 404
    instance_id = path.split("/")[3]
    assert response.json() == {"code": "not_found", "message": f"instance {instance_id!r} does not exist"}


def test_unknown_routes_are_404_and_wrong_methods_405(visa_client: TestClient, fake: FakeProvisioner):
    unknown = visa_client.get("/api/no-such-route")
    assert (unknown.status_code, unknown.json()) == (404, {"code": "not_found", "message": "no such resource"})
    assert visa_client.put("/api/instances").json()["code"] == "method_not_allowed"
    assert visa_client.put("/api/instances").status_code == 405
    assert fake.calls == []


def test_get_instance_never_answers_5xx_when_the_service_fails(visa_client: TestClient, fake: FakeProvisioner):
    """VISA reads any failure of this call as "deleted" and orphans the VM: an unexpected error is UNKNOWN instead."""
    fake.failure = RuntimeError("database is gone")
    response = visa_client.get("/api/instances/100042")
    assert response.status_code == 200
    assert response.json() == {
        "id": "100042",
        "name": "",
        "state": "UNKNOWN",
        "address": None,
        "imageId": "",
        "flavourId": "",
        "createdAt": "",
        "securityGroups": [],
        "fault": None,
    }
    for path in ("/api/instances", "/api/instances/identifiers"):
        failed = visa_client.get(path)
        assert (failed.status_code, failed.json()) == (500, {"code": "internal_error", "message": "internal error"})


# --- create


def test_create_answers_201_with_the_id_and_hands_visas_body_to_the_service(
    visa_client: TestClient, fake: FakeProvisioner
):
    body = visa_body(name="VISA-INSTANCE-7")
    response = visa_client.post("/api/instances", json=body)
    assert (response.status_code, response.json()) == (201, {"id": "100123"})
    assert fake.calls == [
        (
            "create",
            CreateRequest(
                name="VISA-INSTANCE-7",
                image_id="9000",
                flavour_id="small",
                security_groups=["default"],
                metadata=body["metadata"],
                boot_command=None,
            ),
        )
    ]


def test_create_takes_numbers_for_ids_and_optional_fields_absent(visa_client: TestClient, fake: FakeProvisioner):
    body = {"name": "VISA-INSTANCE-8", "imageId": 9000, "flavourId": "small", "bootCommand": "#!/bin/sh\ntrue\n"}
    assert visa_client.post("/api/instances", json=body).status_code == 201
    assert fake.calls == [("create", CreateRequest("VISA-INSTANCE-8", "9000", "small", [], {}, "#!/bin/sh\ntrue\n"))]


MINIMAL = {"name": "a", "imageId": "9000", "flavourId": "small"}


@pytest.mark.parametrize(
    ("raw", "body", "field"),
    [
        (None, {"imageId": "9000", "flavourId": "small"}, "name"),
        (None, MINIMAL | {"name": ""}, "name"),
        (None, MINIMAL | {"name": "a" * 256}, "name"),
        (None, MINIMAL | {"name": "VISA\u0000INSTANCE"}, "name"),
        (None, MINIMAL | {"imageId": {"x": 1}}, "imageId"),
        (None, MINIMAL | {"imageId": "9" * 33}, "imageId"),
        (None, MINIMAL | {"metadata": ["x"]}, "metadata"),
        (None, MINIMAL | {"metadata": {"k": {"nested": 1}}}, "metadata.k"),
        (None, MINIMAL | {"securityGroups": "default"}, "securityGroups"),
        (None, MINIMAL | {"bootCommand": "#!/bin/sh\u0000"}, "bootCommand"),
        (b"[]", None, "body"),
    ],
)
def test_a_bad_body_is_400_invalid_request_naming_the_field_and_never_reaches_the_service(
    visa_client: TestClient, fake: FakeProvisioner, raw: bytes | None, body: dict | None, field: str
):
    if raw is None:
        response = visa_client.post("/api/instances", json=body)
    else:
        response = visa_client.post("/api/instances", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    answer = response.json()
    assert set(answer) == {"code", "message", "details"} and answer["code"] == "invalid_request"
    assert answer["details"][0]["field"] == field and answer["details"][0]["problem"]
    assert answer["message"] == f"{field}: {answer['details'][0]['problem']}"
    assert fake.calls == []


def test_a_missing_field_is_named_in_the_message_and_the_details(visa_client: TestClient):
    response = visa_client.post("/api/instances", json={"imageId": "9000", "flavourId": "small"})
    assert response.json() == {
        "code": "invalid_request",
        "message": "name: Field required",
        "details": [{"field": "name", "problem": "Field required"}],
    }


def test_malformed_json_is_400_malformed_json(visa_client: TestClient, fake: FakeProvisioner):
    malformed = b'{"name": "x",'
    response = visa_client.post("/api/instances", content=malformed, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"code": "malformed_json", "message": "the request body is not valid JSON"}
    assert fake.calls == []


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        (UnknownImage("image '4242' does not exist"), 400),
        (UnknownFlavour("flavour 'huge' does not exist"), 400),
        (UnknownSecurityGroup("unknown security group nope"), 400),
        (InvalidSSHKeyError("sshPublicKey: RSA keys need at least 2048 bits"), 400),
        (QuotaExceeded("the instance quota (1000) is reached"), 409),
        (NoCapacityError("no node has room for 2 vCPUs and 4096 MB"), 409),
        (StoreUnavailable("the instance could not be stored; nothing was created"), 503),
        (BackendUnavailable("Proxmox is unreachable"), 503),
    ],
)
def test_a_create_the_service_refuses_answers_its_status_and_code(
    visa_client: TestClient, fake: FakeProvisioner, refusal: ProvisionerError, status: int
):
    fake.failure = refusal
    response = visa_client.post("/api/instances", json=visa_body())
    assert response.status_code == status
    assert response.json() == {"code": refusal.code, "message": refusal.message}


# --- power, delete, security groups


def test_changes_to_an_instance_are_accepted_with_a_message(visa_client: TestClient, one_instance: FakeProvisioner):
    answers = {
        ("POST", "/api/instances/100001/start", None): "instance start accepted",
        ("POST", "/api/instances/100001/shutdown", None): "instance shutdown accepted",
        ("POST", "/api/instances/100001/reboot", None): "instance reboot accepted",
        ("POST", "/api/instances/100001/security_groups", "ssh"): "security group ssh added",
        ("POST", "/api/instances/100001/security_groups/remove", "web"): "security group web removed",
        ("DELETE", "/api/instances/100001", None): "instance deletion accepted",
    }
    for (method, path, group), message in answers.items():
        response = visa_client.request(method, path, json={"name": group} if group else None)
        assert (response.status_code, response.json()) == (200, {"message": message}), path
    assert one_instance.calls == [
        ("power", "100001", JobKind.START, "visa"),
        ("power", "100001", JobKind.SHUTDOWN, "visa"),
        ("power", "100001", JobKind.REBOOT, "visa"),
        ("add_security_group", "100001", "ssh", "visa"),
        ("remove_security_group", "100001", "web", "visa"),
        ("delete", "100001", "visa"),
    ]


def test_an_instance_s_groups_are_plain_strings_and_a_change_needs_a_name(
    visa_client: TestClient, one_instance: FakeProvisioner
):
    assert visa_client.get("/api/instances/100001/security_groups").json() == ["default", "web"]
    for body in ({}, {"name": ""}, {"name": ["web"]}):
        response = visa_client.post("/api/instances/100001/security_groups", json=body)
        assert (response.status_code, response.json()["code"]) == (400, "invalid_request")
    assert one_instance.calls == [("instance_security_groups", "100001", "visa")]


# --- catalogue


def test_the_catalogue_has_visas_units_and_shapes(visa_client: TestClient, fake: FakeProvisioner):
    image = {"id": "9000", "name": "debian-12-cloud", "size": 3 * GiB}
    assert visa_client.get("/api/images").json() == [image]
    assert visa_client.get("/api/images/9000").json() == image
    flavour = {"id": "small", "name": "Small", "cpus": 2, "ram": 4096, "disk": 20}
    assert visa_client.get("/api/flavours").json() == [flavour]
    assert visa_client.get("/api/flavours/small").json() == flavour
    assert visa_client.get("/api/security_groups").json() == ["default", "ssh", "web"]
    assert visa_client.get("/api/metrics").json() == fake.limits
    for path, message in (("/api/images/9001", "image '9001'"), ("/api/flavours/huge", "flavour 'huge'")):
        response = visa_client.get(path)
        assert (response.status_code, response.json()) == (
            404,
            {"code": "not_found", "message": f"{message} does not exist"},
        )


@pytest.mark.parametrize("path", ["/api/images", "/api/images/9000", "/api/security_groups", "/api/metrics"])
def test_an_unreachable_proxmox_is_503_backend_unavailable(visa_client: TestClient, fake: FakeProvisioner, path: str):
    fake.failure = BackendUnavailable("Proxmox is unreachable or the cluster view is stale")
    response = visa_client.get(path)
    assert response.status_code == 503
    assert response.json() == {
        "code": "backend_unavailable",
        "message": "Proxmox is unreachable or the cluster view is stale",
    }
