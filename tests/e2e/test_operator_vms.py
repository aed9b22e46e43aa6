"""Operator VMs over /v1 on the simulator, through the real playbooks: a token's VM from create to running with its
keys and SSH command, then stopped, started and deleted; quotas, idempotent creates, leases, bad input; VISA and
operators each see and change only their own."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from engine.guestkey import GuestKey
from engine.models import TokenRole
from engine.tokens import Quotas, Tokens
from tests.conftest import ROOT, SITE_KEY, USER_KEY, LiveService, visa_body, wait_for
from tests.helpers.faults import control
from tests.helpers.operator_vms import fingerprint, wait_vm

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]

EMULATED = "the simulator's emulated guests have no SSH (PROVISIONER_SIM_GUESTS=container boots real ones)"
OTHER_KEY = (
    Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    + " other@example.org"
)


def as_token(service: LiveService, name: str, role: TokenRole = TokenRole.OPERATOR, **quotas: int) -> httpx.Client:
    token = Tokens(service.runtime.db).create(name, role, Quotas(**quotas))
    return httpx.Client(base_url=service.base, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture(scope="module")
def alice(service: LiveService) -> Iterator[httpx.Client]:
    with as_token(service, "alice") as client:
        yield client


def guest_key(service: LiveService) -> str:
    return GuestKey.load(service.settings.guest_key_path).public


def server_sent_events(stream: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event type, its data as JSON) of each event of a text/event-stream."""
    kind = "message"
    for text in stream.iter_lines():
        if text.startswith("event: "):
            kind = text.removeprefix("event: ")
        elif text.startswith("data: "):
            yield kind, json.loads(text.removeprefix("data: "))
        elif not text:
            kind = "message"


def vm_body(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "9000", "size": "small", "ssh_keys": [USER_KEY], **fields}


def wait_gone(client: httpx.Client, vm_id: str) -> None:
    wait_for(lambda: client.get(f"/v1/vms/{vm_id}").status_code == 404, timeout=120, what=f"VM {vm_id} to go")


def test_a_vm_lives_from_create_to_delete_with_its_keys_and_ssh_command(service: LiveService, alice: httpx.Client):
    accepted = alice.post("/v1/vms", json=vm_body("alice-one", ssh_keys=[USER_KEY, OTHER_KEY], user="alice"))
    assert accepted.status_code == 202, accepted.text
    vm, job = accepted.json()["vm"], accepted.json()["job"]
    assert (vm["state"], vm["owner"], vm["flavour"], job["kind"]) == ("building", "alice", "size:small", "create")
    assert vm["resources"]["cpus"] == 1 and vm["resources"]["memory_mb"] == 1024 and vm["resources"]["disk_gb"] >= 10
    running = wait_vm(alice, vm["id"], "running")
    address = running["address"]
    host_key = running["ssh"].pop("host_key")
    assert running["ssh"] == {"host": address, "port": 22, "user": "alice", "command": f"ssh alice@{address}"}
    phoned_home = service.stored(vm["id"]).host_key or ""
    assert host_key == " ".join(phoned_home.split()[:2]) and host_key.startswith("ssh-ed25519 ")
    assert [j["kind"] for j in running["jobs"]] == ["create"] and running["jobs"][0]["state"] == "successful"
    keys = alice.get(f"/v1/vms/{vm['id']}/ssh-keys").json()["keys"]
    assert [(k["key"], k["site"]) for k in keys] == [
        (SITE_KEY, True),
        (guest_key(service), True),
        (USER_KEY, False),
        (OTHER_KEY, False),
    ], "the site's keys and both of the caller's"

    assert alice.post(f"/v1/vms/{vm['id']}/stop").status_code == 202
    wait_vm(alice, vm["id"], "stopped")
    assert alice.post(f"/v1/vms/{vm['id']}/start").status_code == 202
    wait_vm(alice, vm["id"], "running")
    assert alice.post(f"/v1/vms/{vm['id']}/stop", params={"force": "true"}).json()["job"]["kind"] == "stop"
    wait_vm(alice, vm["id"], "stopped")
    deleted = alice.delete(f"/v1/vms/{vm['id']}")
    assert (deleted.status_code, deleted.json()["job"]["kind"]) == (202, "delete")
    wait_gone(alice, vm["id"])


def test_visa_and_operators_each_see_and_change_only_their_own(service: LiveService, alice: httpx.Client):
    mine = alice.post("/v1/vms", json=vm_body("alice-two")).json()["vm"]["id"]
    visas = service.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-SIDE")).json()["id"]
    with as_token(service, "bob") as bob:
        assert bob.get("/v1/vms").json() == {"vms": [], "next_after": None}
        assert bob.get(f"/v1/vms/{mine}").status_code == 404
        assert bob.delete(f"/v1/vms/{mine}").status_code == 404
        assert bob.get(f"/v1/vms/{visas}").status_code == 404, "VISA's are not operator VMs"
    assert [v["id"] for v in alice.get("/v1/vms").json()["vms"]] == [mine]
    assert mine not in [i["id"] for i in service.client.get("/api/instances").json()]
    assert mine not in [i["id"] for i in service.client.get("/api/instances/identifiers").json()]
    assert service.client.get(f"/api/instances/{mine}").status_code == 404
    assert service.client.delete(f"/api/instances/{mine}").status_code == 404
    assert [v["id"] for v in service.operator.get("/v1/vms", params={"owner": "alice"}).json()["vms"]] == [mine]
    assert service.client.delete(f"/api/instances/{visas}").status_code == 200
    assert alice.delete(f"/v1/vms/{mine}").status_code == 202
    wait_gone(alice, mine)


def test_quotas_refuse_a_create_naming_the_limit_and_change_nothing(service: LiveService):
    with as_token(service, "carol", max_vms=1, max_vcpus=1) as carol:
        too_big = carol.post("/v1/vms", json=vm_body("carol-big", size="medium"))
        assert (too_big.status_code, too_big.json()["code"]) == (403, "quota_vcpus")
        first = carol.post("/v1/vms", json=vm_body("carol-one"))
        assert first.status_code == 202
        second = carol.post("/v1/vms", json=vm_body("carol-two"))
        assert (second.status_code, second.json()["code"]) == (403, "quota_vms")
        assert [v["name"] for v in carol.get("/v1/vms").json()["vms"]] == ["carol-one"]
        assert carol.delete(f"/v1/vms/{first.json()['vm']['id']}").status_code == 202
        wait_gone(carol, first.json()["vm"]["id"])


def test_an_idempotency_key_answers_the_same_vm_and_refuses_another_body(alice: httpx.Client):
    body = vm_body("alice-idem")
    key = {"Idempotency-Key": "create-alice-idem-1"}
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: alice.post("/v1/vms", json=body, headers=key), range(5)))
    assert {a.status_code for a in answers} == {202}
    assert len({(a.json()["vm"]["id"], a.json()["job"]["id"]) for a in answers}) == 1, "one VM, one job"
    conflict = alice.post("/v1/vms", json=vm_body("alice-idem", size="medium"), headers=key)
    assert (conflict.status_code, conflict.json()["code"]) == (409, "idempotency_conflict")
    vm_id = answers[0].json()["vm"]["id"]
    assert [v["id"] for v in alice.get("/v1/vms", params={"name_prefix": "alice-idem"}).json()["vms"]] == [vm_id]
    assert alice.delete(f"/v1/vms/{vm_id}").status_code == 202
    wait_gone(alice, vm_id)


def test_a_lease_is_set_changed_and_ends_in_a_delete(service: LiveService, alice: httpx.Client):
    accepted = alice.post("/v1/vms", json=vm_body("alice-lease", lease=3600)).json()["vm"]
    ends = datetime.fromisoformat(accepted["expires_at"])
    assert timedelta(minutes=59) < ends - datetime.now(UTC) <= timedelta(hours=1)
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    extended = alice.patch(f"/v1/vms/{accepted['id']}", json={"expires_at": later})
    assert extended.status_code == 200 and datetime.fromisoformat(extended.json()["expires_at"]) > ends
    assert alice.patch(f"/v1/vms/{accepted['id']}", json={"lease": 10}).status_code == 400, "at least 60 s"
    wait_vm(alice, accepted["id"], "running")
    # The lease ends (as if its time had come while the service was down): the reconciler deletes the VM.
    service.runtime.store.set_lease(int(accepted["id"]), None, datetime.now(UTC) - timedelta(seconds=1))
    wait_gone(alice, accepted["id"])
    jobs = service.operator.get("/v1/jobs", params={"instance_id": accepted["id"]}).json()
    assert {j["kind"] for j in jobs} == {"create", "delete"}


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        (vm_body("x", size="huge"), "invalid_request", "small"),
        (vm_body("x", image="no-such-image"), "unknown_image", "9000"),
        (vm_body("x", ssh_keys=[USER_KEY, "ssh-rsa nope"]), "invalid_ssh_key", "ssh_keys[1]"),
        (vm_body("x", flavour="small"), "invalid_request", "exactly one of"),
        (vm_body("x", size=None, cpus=2), "invalid_request", "all of cpus"),
        (vm_body("x", flavour="no-such", size=None), "unknown_flavour", "small"),
        (vm_body("x", ssh_keys=[]), "invalid_request", "ssh_keys"),
        (vm_body("bad name!"), "invalid_request", "name"),
        (vm_body("x", lease=3600, expires_at="2099-01-01T00:00:00Z"), "invalid_request", "not both"),
        (vm_body("x", expires_at="2000-01-01T00:00:00Z"), "invalid_request", "future"),
        (vm_body("x", surprise=1), "invalid_request", "surprise"),
    ],
)
def test_bad_input_is_a_400_that_says_why_and_makes_nothing(
    alice: httpx.Client, body: dict[str, Any], code: str, says: str
):
    before = alice.get("/v1/vms").json()
    refused = alice.post("/v1/vms", json=body)
    assert (refused.status_code, refused.json()["code"]) == (400, code), refused.text
    assert says in refused.text
    assert alice.get("/v1/vms").json() == before


def test_a_viewer_lists_but_cannot_create(service: LiveService):
    with as_token(service, "vera", TokenRole.VIEWER) as vera:
        assert vera.get("/v1/vms").status_code == 200
        assert vera.get("/v1/sizes").json()[0] == {"name": "small", "cpus": 1, "memory_mb": 1024, "disk_gb": 10}
        assert "9000" in [i["id"] for i in vera.get("/v1/images").json()]
        assert vera.post("/v1/vms", json=vm_body("vera-one")).status_code == 403


def test_the_cli_creates_with_wait_lists_shows_sshes_and_deletes(service: LiveService, tmp_path: Path):
    token = Tokens(service.runtime.db).create("cli-user", TokenRole.OPERATOR)
    fake_ssh = tmp_path / "bin" / "ssh"
    fake_ssh.parent.mkdir()
    fake_ssh.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "ssh-args"}\n', encoding="utf-8")
    fake_ssh.chmod(0o755)
    env = {
        "PATH": f"{fake_ssh.parent}:/usr/bin:/bin",
        "PROVISIONER_URL": service.base,
        "PROVISIONER_TOKEN": token,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }

    def vm(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "provisioner.cli", "vm", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)

    made = vm("create", "cli-one", "--image", "9000", "--size", "small", "--ssh-key", USER_KEY, "--wait")
    assert made.returncode == 0, made.stderr
    assert "Converge the VM" in made.stderr, "the tasks were shown as they ran"
    assert "is running: ssh " in made.stderr
    [listed] = json.loads(vm("list", "--json").stdout)
    assert (listed["name"], listed["state"], listed["owner"]) == ("cli-one", "running", "cli-user")
    shown = vm("show", listed["id"])
    assert shown.returncode == 0 and f"ssh {listed['ssh']['user']}@{listed['address']}" in shown.stdout
    logged = vm("logs", listed["id"])
    assert logged.returncode == 0 and "create   Converge the VM" in logged.stdout
    assert vm("ssh", listed["id"], "--", "true").returncode == 0
    ssh_args = (tmp_path / "ssh-args").read_text(encoding="utf-8").split()
    known_hosts = tmp_path / "cache" / "provisioner" / "known_hosts"
    pinned = ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    assert ssh_args == ["-p", "22", *pinned, f"{listed['ssh']['user']}@{listed['address']}", "true"]
    host_key = " ".join((service.stored(listed["id"]).host_key or "").split()[:2])
    assert known_hosts.read_text(encoding="utf-8") == f"{listed['address']} {host_key}\n", "the phoned-home key"
    assert vm("create", "cli-two", "--image", "9000", "--ssh-key", "ssh-rsa nope").returncode == 2
    assert vm("create", "cli-two", "--image", "9000", "--size", "huge", "--ssh-key", USER_KEY).returncode == 2
    assert vm("delete", listed["id"], "--wait").returncode == 0
    assert vm("show", listed["id"]).returncode == 2, "gone: 404"


def test_a_vms_logs_are_its_jobs_events_paged_and_followed(service: LiveService, alice: httpx.Client):
    vm = alice.post("/v1/vms", json=vm_body("alice-logs")).json()["vm"]
    wait_vm(alice, vm["id"], "running")
    page = alice.get(f"/v1/vms/{vm['id']}/logs").json()
    lines = page["lines"]
    assert page["cloud_init"] == {"output": "", "truncated": False, "error": EMULATED}
    assert {line["kind"] for line in lines} == {"create"} and page["next_after"] == lines[-1]["id"]
    assert "playbook_on_stats" in [line["event"] for line in lines]
    assert [line["id"] for line in lines] == sorted(line["id"] for line in lines)
    rest = alice.get(f"/v1/vms/{vm['id']}/logs", params={"after": lines[2]["id"]}).json()["lines"]
    assert rest == lines[3:]
    assert alice.post(f"/v1/vms/{vm['id']}/reboot").status_code == 202
    with alice.stream(
        "GET", f"/v1/vms/{vm['id']}/logs", params={"follow": "true"}, headers={"Last-Event-ID": str(page["next_after"])}
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        followed, cloud_init = [], []
        for kind, data in server_sent_events(stream):
            (cloud_init if kind == "cloud-init" else followed).append(data)
            if kind == "message" and data["event"] == "playbook_on_stats":
                break
    assert {line["kind"] for line in followed} == {"reboot"}, "only what came after Last-Event-ID"
    assert cloud_init[0] == {"text": "", "error": EMULATED}, "an emulated guest has no cloud-init output to read"
    with as_token(service, "mallory") as mallory:
        assert mallory.get(f"/v1/vms/{vm['id']}/logs").status_code == 404
    assert alice.delete(f"/v1/vms/{vm['id']}").status_code == 202
    wait_gone(alice, vm["id"])


def test_a_create_that_fails_leaves_a_vm_whose_get_says_why(simulator: Any, alice: httpx.Client):
    clone_fails = {"fault": "error", "method": "POST", "path": "/clone", "status": 500, "times": 1000}
    assert control(simulator, "POST", clone_fails).status_code == 200
    try:
        vm_id = alice.post("/v1/vms", json=vm_body("alice-fails")).json()["vm"]["id"]

        def failed() -> dict[str, Any] | None:
            body = alice.get(f"/v1/vms/{vm_id}").json()
            return body if body["state"] == "error" else None

        broken = wait_for(failed, timeout=180, what="the create to fail")
    finally:
        assert control(simulator, "DELETE").status_code == 200
    assert broken["error"] and broken["error"] != "error", "the job's error, not a placeholder"
    [create] = broken["jobs"]
    assert create["kind"] == "create" and create["state"] in ("failed", "error") and create["error"]
    assert alice.delete(f"/v1/vms/{vm_id}").status_code == 202
    wait_gone(alice, vm_id)


def test_a_vms_keys_change_in_its_seed_and_its_site_keys_stay(
    service: LiveService, simulator: Any, alice: httpx.Client
):
    vm = alice.post("/v1/vms", json=vm_body("alice-keys")).json()["vm"]
    wait_vm(alice, vm["id"], "running")
    keys_url = f"/v1/vms/{vm['id']}/ssh-keys"
    listed = alice.get(keys_url).json()
    assert listed["sync"] == "seed_only", "emulated guests have no SSH: the seed is where keys change"
    site = [k for k in listed["keys"] if k["site"]]
    assert [k["key"] for k in site] == [SITE_KEY, guest_key(service)]
    user = next(k for k in listed["keys"] if not k["site"])
    assert user == {
        "fingerprint": fingerprint(USER_KEY),
        "type": "ssh-ed25519",
        "comment": USER_KEY.split()[2],
        "key": USER_KEY,
        "site": False,
    }

    added = alice.post(keys_url, json={"key": f"  {OTHER_KEY}\n"})
    assert added.status_code == 202, added.text
    assert added.json()["key"]["fingerprint"] == fingerprint(OTHER_KEY) and added.json()["job"] is None
    assert [k["key"] for k in added.json()["keys"]][-2:] == [USER_KEY, OTHER_KEY]
    again = alice.post(keys_url, json={"key": OTHER_KEY.rsplit(" ", 1)[0] + " same-key@elsewhere"})
    assert again.status_code == 202 and len(again.json()["keys"]) == 4, "a key the VM has is not added twice"
    assert OTHER_KEY in seed_vendor_keys(service, simulator, vm["id"]), "the seed has it: a rebuilt guest gets it"

    refusals = [
        (alice.post(keys_url, json={"key": "ssh-rsa AAAA"}), 400, "invalid_ssh_key", "key:"),
        (alice.post(keys_url, json={"key": OTHER_KEY, "extra": 1}), 400, "invalid_request", "extra"),
        (alice.delete(f"{keys_url}/{fingerprint(SITE_KEY)}"), 409, "site_key", "site key"),
        (alice.delete(f"{keys_url}/SHA256:{'A' * 43}"), 404, "not_found", "no key with fingerprint"),
        (alice.delete(f"{keys_url}/not-a-fingerprint"), 400, "invalid_request", "fingerprint"),
        (alice.post("/v1/vms/999999999/ssh-keys", json={"key": OTHER_KEY}), 404, "not_found", "999999999"),
    ]
    for refused, status, code, says in refusals:
        assert (refused.status_code, refused.json()["code"]) == (status, code), refused.text
        assert says in refused.json()["message"], refused.text
    with as_token(service, "mallory-keys") as mallory:
        assert (
            mallory.get(keys_url).status_code == 404
            and mallory.post(keys_url, json={"key": SITE_KEY}).status_code == 404
        )
    with as_token(service, "auditor-keys", TokenRole.VIEWER) as viewer:
        assert viewer.get(keys_url).status_code == 200
        assert viewer.post(keys_url, json={"key": OTHER_KEY}).status_code == 403
    assert len(alice.get(keys_url).json()["keys"]) == 4, "no refusal changed anything"

    # OpenSSH's fingerprint as it is (its base64 may hold '/' and '+'), escaped, or in base64url: the same key.
    removed = alice.delete(f"{keys_url}/{fingerprint(USER_KEY)}")
    assert removed.status_code == 202, removed.text
    assert [k["key"] for k in removed.json()["keys"] if not k["site"]] == [OTHER_KEY]
    assert USER_KEY not in seed_vendor_keys(service, simulator, vm["id"])
    url_safe = fingerprint(OTHER_KEY).replace("+", "-").replace("/", "_")
    assert alice.delete(f"{keys_url}/{url_safe}").status_code == 202
    assert [k["site"] for k in alice.get(keys_url).json()["keys"]] == [True, True], "no user key is left"
    audited = service.operator.get("/v1/audit", params={"actor": "alice", "limit": 100}).json()["entries"]
    on_vm = [e for e in audited if (e["target"] or "").startswith(f"vm_id={vm['id']}")]
    assert {"add_key", "remove_key"} <= {e["action"] for e in on_vm}
    assert alice.delete(f"/v1/vms/{vm['id']}").status_code == 202
    wait_gone(alice, vm["id"])


def seed_vendor_keys(service: LiveService, simulator: Any, vm_id: str) -> list[str]:
    """The user's keys in the vendor-data the VM's seed serves now."""
    smbios = dict(p.split("=", 1) for p in simulator.sim.vm(int(vm_id)).config["smbios1"].split(",") if "=" in p)
    url = base64.b64decode(smbios["serial"]).decode().split(";s=", 1)[1]
    vendor = yaml.safe_load(service.anonymous.get(url + "vendor-data").text)
    return list(vendor["users"][0]["ssh_authorized_keys"])
