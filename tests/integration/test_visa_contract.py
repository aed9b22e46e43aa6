"""The VISA web-provider contract (docs: shared notes visa-contract.md §1-§9): shapes, units, codes, auth."""

from __future__ import annotations

import base64

import pytest

from tests.conftest import TOKEN, LiveService, mutations, visa_body
from tests.helpers.visa import ROUTES, STATES

GiB = 1024**3
# Well-formed, but too weak: 1024 bits.
RSA_1024 = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDPTDazhVg+nfFwYLb/0cn7sq7StCRrUnAwe5NvZVraxBFCd5cfqShHqnbKrCi3wvMhaGDNj"
    "T6TMl5CG0N03rIgp7LazGW+az9nYY0kzmV8d3WkUc8H2b9f1BPLFx+P8O6uB+mB1G+xhoZH20ukFPq5BZqb+qR6RS7IGxMtg3Jkqw== "
    "weak@example.org"
)
# An sk-ssh-ed25519 key whose blob ends after the public key: no application string.
SK_WITHOUT_APPLICATION = (
    "sk-ssh-ed25519@openssh.com "
    + base64.b64encode(b"\0\0\0\x1ask-ssh-ed25519@openssh.com" + b"\0\0\0\x20" + bytes(range(32))).decode()
)
OPTIONAL = [
    "/api/devices",
    "/api/device_allocations",
    "/api/flavours/small/device_allocations",
    "/api/device/PCI_PASSTHROUGH/a100",
    "/api/custom_resource_classes",
    "/api/hypervisor_inventories",
    "/api/hypervisor_usages",
    "/api/hypervisor_allocations",
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN[:-1]])
def test_every_api_route_needs_the_token_before_anything_else(
    service: LiveService, method: str, path: str, token: str | None
):
    headers = {"X-Auth-Token": token} if token else {}
    response = service.anonymous.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_images_are_templates_with_sizes_in_bytes(service: LiveService):
    images = service.client.get("/api/images").json()
    assert {i["id"] for i in images} == {"9000", "9001"}
    debian = next(i for i in images if i["id"] == "9000")
    assert debian == {"id": "9000", "name": "debian-12-cloud", "size": 3 * GiB}
    assert service.client.get("/api/images/9000").json() == debian
    for unknown in ("12345", "abc", "100000"):
        response = service.client.get(f"/api/images/{unknown}")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


def test_flavours_have_identical_units_in_list_and_single_get(service: LiveService):
    flavours = service.client.get("/api/flavours").json()
    assert flavours, "the shipped catalogue is loaded"
    small = next(f for f in flavours if f["id"] == "small")
    assert small == {"id": "small", "name": "Small (2 vCPU, 4 GB)", "cpus": 2, "ram": 4096, "disk": 20}
    for flavour in flavours:
        assert set(flavour) == {"id", "name", "cpus", "ram", "disk"}
        assert service.client.get(f"/api/flavours/{flavour['id']}").json() == flavour
    assert service.client.get("/api/flavours/nope").status_code == 404


def test_security_groups_are_plain_strings(service: LiveService):
    assert service.client.get("/api/security_groups").json() == ["default", "ssh", "web"]


def test_metrics_are_six_integers_with_visa_names(service: LiveService):
    metrics = service.client.get("/api/metrics").json()
    assert set(metrics) == {
        "maxTotalRamSize",
        "totalRamUsed",
        "maxTotalInstances",
        "totalInstancesUsed",
        "maxTotalCores",
        "totalCoresUsed",
    }
    assert all(isinstance(v, int) and 0 <= v < 2**31 for v in metrics.values())
    assert metrics["maxTotalInstances"] == service.settings.max_instances > 0
    nodes = service.runtime.cluster.snapshot().nodes.values()
    assert metrics["maxTotalCores"] == int(sum(n.maxcpu for n in nodes) * service.settings.cpu_overcommit)
    assert metrics["maxTotalRamSize"] == sum(n.maxmem for n in nodes) // 1024**2


@pytest.mark.parametrize("path", OPTIONAL)
def test_optional_endpoints_answer_404(service: LiveService, path: str):
    assert service.client.get(path).status_code == 404


def test_migrate_is_not_available(service: LiveService):
    body = {"host": "pve2", "blockMigration": False, "diskOverCommit": False}
    assert service.client.post("/api/instances/100000/migrate", json=body).status_code == 404


@pytest.mark.parametrize(
    ("path", "method"),
    [
        # 199999 ends the VMID range: this module's creates (from 100000 up) never reach it.
        ("/api/instances/199999", "GET"),
        ("/api/instances/999999999", "GET"),
        ("/api/instances/abc", "GET"),
        ("/api/instances/199999/start", "POST"),
        ("/api/instances/199999/shutdown", "POST"),
        ("/api/instances/199999/reboot", "POST"),
        ("/api/instances/199999", "DELETE"),
        ("/api/instances/199999/security_groups", "GET"),
        ("/api/instances/9000", "GET"),
    ],
)
def test_unknown_instances_are_404(service: LiveService, path: str, method: str):
    response = service.client.request(method, path)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


BAD_BODIES = [
    ("malformed_json", b'{"name": "x",', {}),
    ("invalid_request", b"[]", {}),
    ("invalid_request", None, {"imageId": "9000", "flavourId": "small"}),
    ("invalid_request", None, {"name": "", "imageId": "9000", "flavourId": "small"}),
    ("invalid_request", None, {"name": "a", "imageId": {"x": 1}, "flavourId": "small"}),
    ("invalid_request", None, {"name": "a", "imageId": "9000", "flavourId": "small", "metadata": ["x"]}),
    ("invalid_request", None, {"name": "a", "imageId": "9000", "flavourId": "small", "securityGroups": "default"}),
    ("invalid_request", None, {"name": "a", "imageId": "9000", "flavourId": "small", "metadata": {"k": {"nested": 1}}}),
    # NUL characters (PostgreSQL cannot store them), over-long strings and numbers: a 400, never a 500.
    ("invalid_request", None, {"name": "VISA\u0000INSTANCE", "imageId": "9000", "flavourId": "small"}),
    ("invalid_request", None, {"name": "a", "imageId": "9000", "flavourId": "small", "metadata": {"k\u0000": "v"}}),
    ("invalid_request", None, {"name": "a", "imageId": "9000", "flavourId": "small", "metadata": {"k": "v\u0000"}}),
    ("invalid_request", None, {"name": "a", "imageId": "9000", "flavourId": "small", "bootCommand": "#!/bin/sh\u0000"}),
    ("invalid_request", None, {"name": "a", "imageId": "9000", "flavourId": "small", "securityGroups": ["d\u0000"]}),
    ("invalid_request", None, {"name": "a" * 256, "imageId": "9000", "flavourId": "small"}),
    ("invalid_request", None, {"name": "a", "imageId": "9" * 33, "flavourId": "small"}),
    ("invalid_request", None, {"name": "a", "imageId": 10**40, "flavourId": "small"}),
    ("unknown_image", None, {"name": "a", "imageId": "9" * 32, "flavourId": "small"}),
    ("unknown_image", None, {"name": "a", "imageId": "4242", "flavourId": "small"}),
    ("unknown_image", None, {"name": "a", "imageId": "not-a-number", "flavourId": "small"}),
    ("unknown_image", None, {"name": "a", "imageId": "²", "flavourId": "small"}),  # "²".isdigit() is true
    ("unknown_image", None, {"name": "a", "imageId": "٩٠٠٠", "flavourId": "small"}),  # Arabic-Indic 9000
    ("unknown_flavour", None, {"name": "a", "imageId": "9000", "flavourId": "huge"}),
    (
        "unknown_security_group",
        None,
        {"name": "a", "imageId": "9000", "flavourId": "small", "securityGroups": ["default", "nope"]},
    ),
    (
        "invalid_ssh_key",
        None,
        {"name": "a", "imageId": "9000", "flavourId": "small", "metadata": {"sshPublicKey": "ssh-rsa AAAA-garbage"}},
    ),
    (
        "invalid_ssh_key",
        None,
        {"name": "a", "imageId": "9000", "flavourId": "small", "metadata": {"sshPublicKey": RSA_1024}},
    ),
    (
        "invalid_ssh_key",
        None,
        {"name": "a", "imageId": "9000", "flavourId": "small", "metadata": {"sshPublicKey": SK_WITHOUT_APPLICATION}},
    ),
]


@pytest.mark.parametrize(("code", "raw", "body"), BAD_BODIES)
def test_bad_creates_get_a_400_with_a_stable_code_and_change_nothing(
    service: LiveService, simulator, code: str, raw: bytes | None, body: dict
):
    service.wait_idle()  # the jobs of instances made by other tests no longer change Proxmox or the list
    before_requests = len(simulator.sim.requests)
    before = service.client.get("/api/instances/identifiers").json()
    if raw is not None:
        response = service.client.post("/api/instances", content=raw, headers={"Content-Type": "application/json"})
    else:
        response = service.client.post("/api/instances", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    assert response.json()["message"]
    assert service.client.get("/api/instances/identifiers").json() == before
    assert mutations(simulator, before_requests) == []


def test_create_answers_an_id_at_once_and_get_reports_building(service: LiveService):
    response = service.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-7"))
    assert response.status_code == 201, response.text
    instance_id = response.json()["id"]
    assert set(response.json()) == {"id"} and instance_id.isdigit()
    body = service.instance(instance_id)
    assert body["state"] in STATES
    assert body["state"] == "BUILDING"
    assert set(body) == {
        "id",
        "name",
        "state",
        "address",
        "imageId",
        "flavourId",
        "createdAt",
        "securityGroups",
        "fault",
    }
    assert body["id"] == instance_id and body["name"] == "VISA-INSTANCE-7"
    assert body["imageId"] == "9000" and body["flavourId"] == "small"
    assert body["securityGroups"] == ["default"] and body["fault"] is None and body["address"] is None
    assert body["createdAt"].endswith("Z") and "T" in body["createdAt"]
    identifiers = service.client.get("/api/instances/identifiers").json()
    assert {"id": instance_id, "name": "VISA-INSTANCE-7"} in identifiers
    assert all(set(i) == {"id", "name"} for i in identifiers)
    assert all(i["id"] not in ("9000", "9001") for i in identifiers)
    listed = {i["id"]: i for i in service.client.get("/api/instances").json()}
    assert listed[instance_id]["name"] == "VISA-INSTANCE-7"
    assert all(i["state"] in STATES for i in listed.values())


def test_numbers_are_accepted_where_visa_sends_strings(service: LiveService):
    response = service.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-8", image=9000))
    assert response.status_code == 201, response.text
    assert service.instance(response.json()["id"])["imageId"] == "9000"


def test_responses_are_json(service: LiveService):
    for path in ("/api/images", "/api/flavours", "/api/metrics", "/api/instances", "/api/no-such-route"):
        assert service.client.get(path).headers["content-type"].startswith("application/json")


def test_get_instance_never_answers_5xx_when_our_store_fails(service: LiveService, monkeypatch: pytest.MonkeyPatch):
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("database is gone")

    monkeypatch.setattr(service.runtime.provisioner, "view", broken)
    response = service.client.get("/api/instances/100042")
    assert response.status_code == 200
    assert response.json()["state"] == "UNKNOWN" and response.json()["id"] == "100042"


def _jobs(service: LiveService, instance_id: str) -> list[dict]:
    return service.operator.get("/v1/jobs", params={"instance_id": instance_id}).json()


def test_a_repeated_delete_is_accepted_once(service: LiveService):
    instance_id = service.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-30")).json()["id"]
    assert service.client.delete(f"/api/instances/{instance_id}").status_code == 200
    assert service.client.delete(f"/api/instances/{instance_id}").status_code == 200
    assert service.instance(instance_id)["state"] == "DELETED"
    deletes = [j for j in _jobs(service, instance_id) if j["kind"] == "delete"]
    assert len(deletes) == 1
    assert service.client.post(f"/api/instances/{instance_id}/start").status_code == 404


def test_group_changes_while_building_are_queued_behind_the_create(service: LiveService):
    instance_id = service.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-31")).json()["id"]
    path = f"/api/instances/{instance_id}/security_groups"
    assert service.client.post(path, json={"name": "web"}).status_code == 200
    assert service.client.get(path).json() == ["default", "web"]
    kinds = [j["kind"] for j in sorted(_jobs(service, instance_id), key=lambda j: j["created_at"])]
    assert kinds == ["create", "firewall"]
    assert service.client.post(path, json={"name": "web"}).status_code == 200  # already there: nothing queued
    assert len(_jobs(service, instance_id)) == 2


def test_a_bad_id_in_a_burst_fails_alone_and_id_routes_answer_404(service: LiveService):
    """Creates committed together: the one with a non-ASCII digit id is refused, the others are accepted."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [visa_body(name=f"VISA-INSTANCE-B{n}") for n in range(4)] + [
        visa_body(name="VISA-INSTANCE-BAD", image="²")
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: service.client.post("/api/instances", json=body), bodies))
    assert [a.status_code for a in answers] == [201, 201, 201, 201, 400], [a.text for a in answers]
    assert answers[-1].json()["code"] == "unknown_image"
    for path in ("/api/images/²", "/api/instances/²", "/api/instances/٩٠٠٠/security_groups"):
        assert service.client.get(path).status_code == 404, path
    for answer in answers[:4]:
        assert service.client.delete(f"/api/instances/{answer.json()['id']}").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "status"),
    [
        ("GET", "/v1/jobs", {"instance_id": str(10**30)}, None, 400),
        ("GET", "/v1/jobs", {"instance_id": "-1"}, None, 400),
        ("GET", "/v1/jobs/%00", None, None, 404),
        ("GET", "/v1/jobs/" + "x" * 5000, None, None, 404),
        ("GET", "/v1/jobs/00000000-0000-0000-0000-000000000000/events", {"after": str(10**30)}, None, 400),
        ("POST", "/v1/jobs/%00/cancel", None, None, 404),
        ("DELETE", "/v1/flavours/%00", None, None, 404),
        ("GET", "/api/flavours/%00", None, None, 404),
        ("PUT", "/v1/flavours/x", None, {"id": "x", "name": "n\u0000", "cpus": 1, "ram_mb": 512, "disk_gb": 1}, 400),
        ("PUT", "/v1/flavours/x", None, {"id": "x", "name": "n", "cpus": 10**30, "ram_mb": 512, "disk_gb": 1}, 400),
    ],
)
def test_nul_bytes_huge_numbers_and_odd_ids_are_4xx_never_5xx(
    service: LiveService, method: str, path: str, params: dict | None, body: dict | None, status: int
):
    client = service.operator if path.startswith("/v1") else service.client
    response = client.request(method, path, params=params, json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] and "\u0000" not in response.text and "x" * 100 not in response.text
