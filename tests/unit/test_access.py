"""Who may do what: API tokens (made once, kept as digests, revoked at once), their roles on /v1, ownership between
VISA's instances and everyone else's, and the audit log of every request that may change something."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from engine.audit import REMOVED, AuditLog, Entry, without_secrets
from engine.db import Database
from engine.errors import Conflict, NotFound, ProvisionerError
from engine.models import ApiToken, Instance, JobKind, TokenRole
from engine.store import Store
from engine.tokens import TOKEN_PREFIX, Principal, Quotas, Tokens
from tests.conftest import TOKEN, visa_body
from tests.helpers.fake_provisioner import FakeProvisioner, instance_view, job
from tests.helpers.store import add_instance

ALICE, VIEWER = TOKEN_PREFIX + "alice-secret", TOKEN_PREFIX + "viewer-secret"
VISA_JOB, ALICE_JOB = "3f0c9a52-0000-4000-8000-00000000000a", "3f0c9a52-0000-4000-8000-00000000000b"


# --- tokens in the store (both databases)


def test_a_token_is_shown_once_kept_as_a_digest_and_stops_working_when_revoked(db: Database):
    tokens = Tokens(db)
    token = tokens.create("alice", TokenRole.OPERATOR, Quotas(max_vms=3, max_vcpus=8))
    assert token.startswith(TOKEN_PREFIX) and len(token) > 40
    assert tokens.authenticate(token) == Principal("alice", TokenRole.OPERATOR, Quotas(max_vms=3, max_vcpus=8))
    with db.session() as session:
        row = session.scalars(select(ApiToken)).one()
        assert token not in {str(value) for value in vars(row).values()}, "only its digest is stored"
    assert tokens.authenticate(token[:-1]) is None and tokens.authenticate("alice") is None
    tokens.revoke("alice")
    assert tokens.authenticate(token) is None
    [listed] = tokens.list()
    assert (listed.name, listed.role, listed.revoked, listed.quotas.max_vms) == ("alice", TokenRole.OPERATOR, True, 3)


@pytest.mark.parametrize("name", ["", "Alice", "-x", "a" * 65, "visa", "operator", "golem", "with space"])
def test_a_token_name_that_is_reserved_or_malformed_is_refused(db: Database, name: str):
    with pytest.raises(ProvisionerError, match="invalid token name"):
        Tokens(db).create(name, TokenRole.VIEWER)
    assert Tokens(db).list() == []


def test_two_tokens_cannot_share_a_name_nor_a_quota_be_negative(db: Database):
    tokens = Tokens(db)
    tokens.create("bob", TokenRole.VIEWER)
    with pytest.raises(Conflict):
        tokens.create("bob", TokenRole.ADMIN)
    with pytest.raises(ProvisionerError, match="max_vms must not be negative"):
        tokens.create("carol", TokenRole.OPERATOR, Quotas(max_vms=-1))
    with pytest.raises(NotFound):
        tokens.revoke("nobody")
    assert [t.name for t in tokens.list()] == ["bob"]


# --- ownership in the store (both databases)


def test_someone_elses_instance_does_not_exist_for_an_owner_scoped_change(db: Database):
    add_instance(db, 100001)
    with db.session() as session:
        instance = session.get_one(Instance, 100001)
        assert instance.owner == "visa", "VISA's by default"
        instance.owner, instance.lifecycle = "alice", "provisioned"
    store = Store(db)
    for change in (
        lambda: store.request_delete(100001, owner="visa"),
        lambda: store.request_power(100001, JobKind.REBOOT, owner="visa"),
        lambda: store.change_groups(100001, ["web"], [], owner="visa"),
    ):
        with pytest.raises(NotFound):
            change()
    assert store.request_power(100001, JobKind.REBOOT, owner="alice").kind == JobKind.REBOOT


# --- the audit log (both databases)


def test_the_audit_log_keeps_no_secret_and_pages_newest_first(db: Database):
    log = AuditLog(db)
    for n in range(3):
        params = {"name": f"vm-{n}", "bootCommand": "curl -H 'token: x'", "nested": {"password": "p", "keep": 1}}
        log.record_now(Entry("visa", "create_instance", f"id={n}", 201, params, "127.0.0.1"))
    newest = log.entries(limit=2)
    assert [e.target for e in newest] == ["id=2", "id=1"]
    assert newest[0].params == {"name": "vm-2", "bootCommand": REMOVED, "nested": {"password": REMOVED, "keep": 1}}
    assert [e.target for e in log.entries(before_id=newest[-1].id)] == ["id=0"]
    assert log.entries(actor="alice") == []


def test_secrets_are_removed_at_any_depth_by_their_key():
    sent = {"user_data": "#cloud-config", "keys": [{"private_key": "x", "public": "ssh-ed25519 A"}], "Token": "t"}
    assert without_secrets(sent) == {
        "user_data": REMOVED,
        "keys": [{"private_key": REMOVED, "public": "ssh-ed25519 A"}],
        "Token": REMOVED,
    }


# --- roles and ownership on /v1, the audit trail on both APIs (the HTTP seam, a fake service)


@pytest.fixture
def owned(fake: FakeProvisioner) -> FakeProvisioner:
    fake.principals = {
        ALICE: Principal("alice", TokenRole.OPERATOR),
        VIEWER: Principal("reader", TokenRole.VIEWER),
    }
    fake.instances = {100001: instance_view(100001), 100002: instance_view(100002, owner="alice")}
    fake.job_rows = {VISA_JOB: job(VISA_JOB, 100001), ALICE_JOB: job(ALICE_JOB, 100002)}
    return fake


def bearer(app: FastAPI, token: str) -> Iterator[TestClient]:
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


@pytest.fixture
def alice(app: FastAPI, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    request.getfixturevalue("owned")
    yield from bearer(app, ALICE)


@pytest.fixture
def viewer(app: FastAPI, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    request.getfixturevalue("owned")
    yield from bearer(app, VIEWER)


def test_an_operator_sees_and_cancels_only_the_jobs_of_its_own_vms(alice: TestClient):
    assert [j["id"] for j in alice.get("/v1/jobs").json()] == [ALICE_JOB]
    assert alice.get(f"/v1/jobs/{VISA_JOB}").status_code == 404
    assert alice.get(f"/v1/jobs/{VISA_JOB}/events").status_code == 404
    assert alice.post(f"/v1/jobs/{VISA_JOB}/cancel").status_code == 404
    assert alice.post(f"/v1/jobs/{ALICE_JOB}/cancel").status_code == 202


def test_a_viewer_reads_everything_and_changes_nothing(viewer: TestClient, owned: FakeProvisioner):
    assert {j["id"] for j in viewer.get("/v1/jobs").json()} == {VISA_JOB, ALICE_JOB}
    refused = viewer.post(f"/v1/jobs/{ALICE_JOB}/cancel")
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert viewer.put("/v1/flavours/small", json={}).status_code == 403
    assert not [call for call in owned.calls if call[0] in ("cancel", "put_flavour")]


def test_flavours_and_the_audit_log_take_an_admin_token(alice: TestClient, operator_client: TestClient):
    flavour = {"id": "tiny", "name": "Tiny", "cpus": 1, "ram_mb": 512, "disk_gb": 5}
    refused = alice.put("/v1/flavours/tiny", json=flavour)
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert alice.get("/v1/audit").status_code == 403
    assert operator_client.put("/v1/flavours/tiny", json=flavour).status_code == 200
    assert operator_client.get("/v1/audit").status_code == 200


@pytest.mark.parametrize("token", ["pvt_unknown", "", TOKEN])
def test_an_unknown_token_is_401_before_anything_even_on_an_unknown_path(
    app: FastAPI, owned: FakeProvisioner, token: str
):
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/nowhere"), ("DELETE", "/v1/jobs")):
            assert client.request(method, path).status_code == 401
    assert owned.audit == [], "what the guard refuses is not an action"


@pytest.mark.usefixtures("owned")
def test_visa_sees_and_changes_only_its_own_instances(visa_client: TestClient):
    assert [i["id"] for i in visa_client.get("/api/instances").json()] == ["100001"]
    assert [i["id"] for i in visa_client.get("/api/instances/identifiers").json()] == ["100001"]
    for method, path in (
        ("GET", "/api/instances/100002"),
        ("DELETE", "/api/instances/100002"),
        ("POST", "/api/instances/100002/reboot"),
        ("GET", "/api/instances/100002/security_groups"),
    ):
        assert visa_client.request(method, path).status_code == 404


def test_every_change_asked_is_in_the_audit_log_with_its_actor_target_and_answer(
    visa_client: TestClient, alice: TestClient, owned: FakeProvisioner
):
    assert visa_client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-9")).status_code == 201
    assert visa_client.post("/api/instances/100001/reboot").status_code == 200
    assert visa_client.post("/api/instances", json={"name": ""}).status_code == 400
    assert alice.post(f"/v1/jobs/{ALICE_JOB}/cancel").status_code == 202
    assert visa_client.get("/api/instances").status_code == 200  # a read: not an action
    recorded = [(e.actor, e.action, e.target, e.status) for e in owned.audit]
    assert recorded == [
        ("visa", "create_instance", "id=100123", 201),
        ("visa", "reboot_instance", "instance_id=100001", 200),
        ("visa", "create_instance", None, 400),
        ("alice", "cancel_job", f"job_id={ALICE_JOB}", 202),
    ]
    assert owned.audit[0].params["name"] == "VISA-INSTANCE-9" and owned.audit[0].client == "testclient"


def test_the_audit_log_pages_with_its_filters(operator_client: TestClient, owned: FakeProvisioner):
    owned.audit = [Entry("visa", "delete_instance", f"instance_id={n}", 200) for n in range(3)]
    first = operator_client.get("/v1/audit", params={"limit": 2}).json()
    assert [e["target"] for e in first["entries"]] == ["instance_id=2", "instance_id=1"]
    rest = operator_client.get("/v1/audit", params={"limit": 2, "before": first["next_before"]}).json()
    assert ([e["target"] for e in rest["entries"]], rest["next_before"]) == (["instance_id=0"], None)
    assert operator_client.get("/v1/audit", params={"actor": "alice"}).json() == {"entries": [], "next_before": None}
    assert operator_client.get("/v1/audit", params={"limit": 0}).status_code == 400


def test_a_store_that_cannot_check_a_token_is_a_503_not_a_crash(app: FastAPI, fake: FakeProvisioner):
    def broken(_token: str) -> None:
        raise RuntimeError("database is locked")

    fake.authenticate = broken  # type: ignore[method-assign]
    with TestClient(app, headers={"Authorization": f"Bearer {ALICE}"}) as client:
        answer = client.get("/v1/jobs")
    assert (answer.status_code, answer.json()["code"]) == (503, "store_unavailable")
    assert "database" not in answer.text
