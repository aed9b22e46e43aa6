"""The provisioner.discovery collection: module_utils signing (cross-checked with the service), the host and
advertisement modules (idempotence, check mode, diff), run in-process against a live registry."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.provisioner.discovery.plugins.module_utils import registry as module_utils
from ansible_collections.provisioner.discovery.plugins.modules import advertisement, host

from discovery import signing
from tests.conftest import start_test_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    handle = start_test_registry(tmp_path_factory.mktemp("registry"))
    yield handle.url
    handle.stop()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "provider.key"
    signing.load_or_create_key(path)
    return path


def run(module: Any, args: dict[str, Any], capsys: pytest.CaptureFixture[str], check: bool = False) -> dict:
    with patch_module_args(args | {"_ansible_check_mode": check, "_ansible_diff": True}), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


# --- module_utils


def test_the_module_utils_signature_verifies_with_the_service_verifier(key_file: Path):
    key = module_utils.load_private_key(str(key_file))
    body = b'{"name": "web-1"}'
    headers = module_utils.signed_headers(key, "POST", "/api/v1/hosts", body, 1_800_000_000, "n" * 20)
    assert headers["X-Provider-ID"] == signing.provider_id(signing.load_key(key_file))
    public = signing.public_key(headers["X-Provider-ID"])
    assert public is not None
    message = signing.canonical_message("POST", "/api/v1/hosts", headers["X-Timestamp"], headers["X-Nonce"], body)
    assert message == module_utils.canonical_message("POST", "/api/v1/hosts", "1800000000", "n" * 20, body)
    assert (
        message == b"POST\n/api/v1/hosts\n1800000000\n" + b"n" * 20 + b"\n" + hashlib.sha256(body).hexdigest().encode()
    )
    assert signing.verify(public, headers["X-Provider-Signature"], message)
    tampered = signing.canonical_message("POST", "/api/v1/hosts", headers["X-Timestamp"], headers["X-Nonce"], b"{}")
    assert not signing.verify(public, headers["X-Provider-Signature"], tampered)


def test_the_service_writes_the_key_owner_only_and_the_modules_read_it(tmp_path: Path):
    path = tmp_path / "keys" / "provider.key"
    created = signing.load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.provider_id(signing.load_or_create_key(path)) == signing.provider_id(created)
    assert module_utils.provider_id(module_utils.load_private_key(str(path))) == signing.provider_id(created)
    (tmp_path / "rsa.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(module_utils.RegistryError, match="cannot read the provider key"):
        module_utils.load_private_key(str(tmp_path / "rsa.pem"))


# --- provisioner.discovery.host


def host_args(registry: str, key_file: Path, **overrides: Any) -> dict[str, Any]:
    args = {
        "url": registry,
        "provider_key_file": str(key_file),
        "name": "web-1",
        "address": "10.0.3.17",
        "ssh_user": "visa",
        "groups": ["visa", "web"],
        "vars": {"role": "frontend"},
        "instance_id": "100042",
    }
    return args | overrides


def registered(registry: str, key_file: Path) -> list[dict[str, Any]]:
    mine = signing.provider_id(signing.load_key(key_file))
    return httpx.get(f"{registry}/api/v1/hosts", params={"provider_id": mine}).json()  # type: ignore[no-any-return]


def test_the_host_module_registers_once_and_then_reports_no_change(registry: str, key_file: Path, capsys):
    first = run(host, host_args(registry, key_file), capsys)
    assert first["changed"] and first["host"]["groups"] == ["visa", "web"] and first["host"]["ssh_user"] == "visa"
    assert first["provider_id"] == signing.provider_id(signing.load_key(key_file))
    assert first["diff"]["before"] == {} and first["diff"]["after"]["address"] == "10.0.3.17"
    again = run(host, host_args(registry, key_file), capsys)
    assert not again["changed"] and again["host"]["updated_at"] == first["host"]["updated_at"]
    moved = run(host, host_args(registry, key_file, address="10.0.3.18"), capsys)
    assert moved["changed"] and moved["diff"]["before"]["address"] == "10.0.3.17"
    assert [h["address"] for h in registered(registry, key_file)] == ["10.0.3.18"]


def test_check_mode_reports_the_change_and_writes_nothing(registry: str, key_file: Path, capsys):
    planned = run(host, host_args(registry, key_file), capsys, check=True)
    assert planned["changed"] and registered(registry, key_file) == []
    run(host, host_args(registry, key_file), capsys)
    assert not run(host, host_args(registry, key_file), capsys, check=True)["changed"]
    change = run(host, host_args(registry, key_file, groups=["db"]), capsys, check=True)
    assert change["changed"] and registered(registry, key_file)[0]["groups"] == ["visa", "web"]
    removal = run(host, host_args(registry, key_file, state="absent"), capsys, check=True)
    assert removal["changed"] and len(registered(registry, key_file)) == 1


def test_the_host_module_deregisters_and_absent_is_ok(registry: str, key_file: Path, capsys):
    run(host, host_args(registry, key_file), capsys)
    gone = run(host, {"url": registry, "provider_key_file": str(key_file), "name": "web-1", "state": "absent"}, capsys)
    assert gone["changed"] and gone["host"] is None and registered(registry, key_file) == []
    again = run(host, {"url": registry, "provider_key_file": str(key_file), "name": "web-1", "state": "absent"}, capsys)
    assert not again["changed"]


def test_refusals_and_key_problems_fail_with_a_clear_message_and_no_key(registry: str, key_file: Path, capsys):
    refused = run(host, host_args(registry, key_file, vars={"ansible_user": "root"}), capsys)
    assert refused["failed"] and refused["code"] == "HOST_002" and "reserved" in refused["msg"]
    missing = run(host, host_args(registry, key_file.parent / "nope.key"), capsys)
    assert missing["failed"] and "cannot read the provider key" in missing["msg"]
    pem = key_file.read_text()
    assert "PRIVATE KEY" not in json.dumps(refused) + json.dumps(missing) and pem not in json.dumps(refused)
    unreachable = run(host, host_args("http://127.0.0.1:9", key_file), capsys)
    assert unreachable["failed"] and "did not answer" in unreachable["msg"]


# --- provisioner.discovery.advertisement


def ad_args(registry: str, key_file: Path, **overrides: Any) -> dict[str, Any]:
    args = {
        "url": registry,
        "provider_key_file": str(key_file),
        "ip_address": "192.0.2.10",
        "country": "se",
        "provider_name": "lab",
        "platform": "x86_64",
        "resources": {"cpu": 8, "memory": 16, "storage": 200},
    }
    return args | overrides


def test_the_advertisement_module_posts_refreshes_and_withdraws(registry: str, key_file: Path, capsys):
    public = f"{registry}/api/v1/advertisements/{signing.provider_id(signing.load_key(key_file))}"
    assert run(advertisement, ad_args(registry, key_file), capsys, check=True)["changed"]
    assert httpx.get(public).status_code == 404
    posted = run(advertisement, ad_args(registry, key_file), capsys)
    assert posted["changed"] and posted["advertisement"]["country"] == "SE"
    refreshed = run(advertisement, ad_args(registry, key_file), capsys)
    assert (
        not refreshed["changed"] and refreshed["advertisement"]["updated_at"] >= posted["advertisement"]["updated_at"]
    )
    smaller = run(advertisement, ad_args(registry, key_file, resources={"cpu": 2, "memory": 4, "storage": 20}), capsys)
    assert smaller["changed"] and httpx.get(public).json()["resources"]["cpu"] == 2
    withdrawn = run(advertisement, {"url": registry, "provider_key_file": str(key_file), "state": "absent"}, capsys)
    assert withdrawn["changed"] and httpx.get(public).status_code == 404
    absent = run(advertisement, {"url": registry, "provider_key_file": str(key_file), "state": "absent"}, capsys)
    assert not absent["changed"]


def test_a_provider_withdraws_only_its_own_advertisement(registry: str, tmp_path: Path, capsys):
    owner, intruder = tmp_path / "owner.key", tmp_path / "intruder.key"
    signing.load_or_create_key(owner)
    signing.load_or_create_key(intruder)
    run(advertisement, ad_args(registry, owner), capsys)
    withdrawn = run(advertisement, {"url": registry, "provider_key_file": str(intruder), "state": "absent"}, capsys)
    assert not withdrawn["changed"]
    owners = f"{registry}/api/v1/advertisements/{signing.provider_id(signing.load_key(owner))}"
    assert httpx.get(owners).status_code == 200


def test_a_rate_limited_request_is_sent_again_after_retry_after_within_the_budget(monkeypatch: pytest.MonkeyPatch):
    from ansible_collections.provisioner.discovery.plugins.module_utils import registry as client

    answers = [client.RegistryError("429", 429, "RATE_001", retry_after=2)] * 2 + [({"ok": True}, {})]
    sent, slept = [], []

    def once(*args: Any) -> Any:
        sent.append(args)
        answer = answers[len(sent) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(client.time, "sleep", slept.append)
    patient = client.Registry("http://registry.invalid", rate_limit_wait=10)
    monkeypatch.setattr(patient, "_exchange_once", once)
    assert patient.request("POST", "/api/v1/hosts", payload={}) == {"ok": True}
    assert slept == [2, 2] and len(sent) == 3

    impatient = client.Registry("http://registry.invalid", rate_limit_wait=0)
    monkeypatch.setattr(impatient, "_exchange_once", lambda *args: (_ for _ in ()).throw(answers[0]))
    with pytest.raises(client.RegistryError, match="429"):
        impatient.request("POST", "/api/v1/hosts", payload={})


def test_no_answer_and_server_errors_are_tried_again_with_a_doubling_backoff_but_refusals_are_not(
    monkeypatch: pytest.MonkeyPatch,
):
    client = module_utils
    down = client.RegistryError("the discovery registry at x did not answer: timed out")
    answers: list[Any] = [down, client.RegistryError("503", 503, "HTTP_503"), down, ({"ok": True}, {})]
    sent, slept = [], []

    def once(*args: Any) -> Any:
        sent.append(args)
        answer = answers[len(sent) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(client.time, "sleep", slept.append)
    registry = client.Registry("http://registry.invalid", retries=3)
    monkeypatch.setattr(registry, "_exchange_once", once)
    assert registry.request("PUT", "/api/v1/hosts/x", payload={}) == {"ok": True}
    assert slept == [1, 2, 4] and len(sent) == 4

    sent.clear()
    answers[:] = [down] * 5
    stubborn = client.Registry("http://registry.invalid", retries=1)
    monkeypatch.setattr(stubborn, "_exchange_once", once)
    with pytest.raises(client.RegistryError, match="did not answer"):
        stubborn.request("GET", "/api/v1/hosts")
    assert len(sent) == 2

    refused = client.Registry("http://registry.invalid", retries=3)
    monkeypatch.setattr(refused, "_exchange_once", lambda *a: (_ for _ in ()).throw(client.RegistryError("403", 403)))
    slept.clear()
    with pytest.raises(client.RegistryError, match="403"):
        refused.request("POST", "/api/v1/hosts", payload={})
    assert slept == []
