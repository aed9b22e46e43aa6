"""End to end on the simulator: every mutation runs the real playbooks through ansible-runner."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.guestkey import GuestKey
from simulator import guest_ipv4
from tests.conftest import SITE_KEY, USER_KEY, LiveService, visa_body, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]
BOOT = "#!/bin/bash\necho 'booted {{ not_a_template }}' > /tmp/visa\n"


def requests_for(simulator: Any, vmid: str, since: int = 0) -> list[tuple[str, str, Any]]:
    marker = f"/qemu/{vmid}"
    return [(m, p, b) for m, p, b in list(simulator.sim.requests)[since:] if marker in p]


def vm_of(simulator: Any, vmid: str) -> Any:
    return simulator.sim.vm(int(vmid))


def seed_url(simulator: Any, vmid: str) -> str:
    smbios = dict(part.split("=", 1) for part in vm_of(simulator, vmid).config["smbios1"].split(",") if "=" in part)
    assert smbios.get("base64") == "1"
    serial = base64.b64decode(smbios["serial"]).decode()
    assert serial.startswith("ds=nocloud-net;s=http://127.0.0.1:")
    return serial.split(";s=", 1)[1]


@pytest.fixture(scope="module")
def created(service: LiveService, simulator: Any) -> dict[str, Any]:
    since = len(simulator.sim.requests)
    body = visa_body(
        name="VISA-INSTANCE-1",
        flavour="small",
        bootCommand=BOOT,
        metadata={"owner": "alice", "instruments": "", "proposals": "", "sshPublicKey": USER_KEY},
    )
    response = service.client.post("/api/instances", json=body)
    assert response.status_code == 201, response.text
    instance_id = response.json()["id"]
    assert service.instance(instance_id)["state"] == "BUILDING"
    active = service.wait_state(instance_id, "ACTIVE")
    return {"id": instance_id, "since": since, "active": active}


def test_create_reaches_active_with_the_guest_address(created: dict[str, Any], simulator: Any):
    active = created["active"]
    vm = vm_of(simulator, created["id"])
    assert active["address"] and active["address"] == guest_ipv4(int(created["id"]))
    assert vm.status == "running" and vm.name == "VISA-INSTANCE-1"


def test_create_made_the_expected_proxmox_calls(created: dict[str, Any], simulator: Any):
    calls = requests_for(simulator, created["id"], created["since"])
    since = list(simulator.sim.requests)[created["since"] :]
    clone = [p for m, p, b in since if m == "POST" and p.endswith("/clone") and created["id"].encode() in b]  # newid
    assert len(clone) == 1 and "/qemu/9000/clone" in clone[0]
    methods = [(m, p.split(f"/qemu/{created['id']}", 1)[1]) for m, p, _ in calls]
    assert ("PUT", "/resize") in methods
    assert ("POST", "/status/start") in methods
    assert any(m in ("PUT", "POST") and p == "/config" for m, p in methods)
    vm = vm_of(simulator, created["id"])
    assert int(vm.config["cores"]) == 2 and int(vm.config["memory"]) == 4096
    assert "size=20G" in vm.config["scsi0"]
    assert "provisioner" in str(vm.config.get("tags"))
    assert not any("cloudinit" in str(v) for v in vm.config.values()), "no Proxmox cloud-init drive in seed mode"


def test_the_guest_got_its_seed_with_our_keys_and_phoned_home(
    created: dict[str, Any], simulator: Any, service: LiveService
):
    run = wait_for(
        lambda: (r := simulator.sim.last_cloud_init(int(created["id"]))) and r.done and r, what="cloud-init run"
    )
    assert run.datasource == "NoCloudNet"
    vendor = yaml.safe_load(run.body("vendor-data"))
    assert vendor["users"][0]["name"] == service.settings.cloud_init_user
    guest_key = GuestKey.load(service.settings.guest_key_path).public  # the provisioner's own, in every guest
    assert vendor["users"][0]["ssh_authorized_keys"] == [SITE_KEY, guest_key, USER_KEY]
    assert run.body("user-data") == BOOT
    meta = yaml.safe_load(run.body("meta-data"))
    assert meta["meta"] == {"owner": "alice", "instruments": "", "proposals": "", "sshPublicKey": USER_KEY}
    assert meta["local-hostname"] == "visa-instance-1"
    wait_for(lambda: service.runtime.db and _phoned_home(service, created["id"]), what="phone home")


def _phoned_home(service: LiveService, instance_id: str) -> bool:
    from engine.models import Instance

    with service.runtime.db.session() as session:
        return session.get(Instance, int(instance_id)).phoned_home_at is not None


def test_the_seed_answers_only_with_the_vms_own_token(created: dict[str, Any], simulator: Any, service: LiveService):
    url = seed_url(simulator, created["id"])
    assert service.anonymous.get(url + "meta-data").status_code == 200
    assert service.anonymous.get(url + "user-data").text == BOOT
    token = url.rstrip("/").rsplit("/", 1)[1]
    wrong = url.replace(token, token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    for name in ("meta-data", "user-data", "vendor-data"):
        assert service.anonymous.get(wrong + name).status_code == 404
    assert service.anonymous.post(wrong + "phone-home", data={"instance_id": "x"}).status_code == 404


def test_power_cycle(created: dict[str, Any], service: LiveService, simulator: Any):
    instance_id = created["id"]
    service.wait_idle()  # the state follows the oldest open job: no other test's job of this instance is left
    assert service.client.post(f"/api/instances/{instance_id}/shutdown").status_code == 200
    assert service.instance(instance_id)["state"] in ("STOPPING", "STOPPED")
    service.wait_state(instance_id, "STOPPED")
    assert vm_of(simulator, instance_id).status == "stopped"
    boots = len(simulator.sim.cloud_init_runs(int(instance_id)))
    assert service.client.post(f"/api/instances/{instance_id}/start").status_code == 200
    assert service.instance(instance_id)["state"] in ("STARTING", "ACTIVE")
    service.wait_state(instance_id, "ACTIVE")
    assert service.client.post(f"/api/instances/{instance_id}/reboot").status_code == 200
    assert service.instance(instance_id)["state"] in ("REBOOTING", "ACTIVE")
    service.wait_state(instance_id, "ACTIVE")
    wait_for(
        lambda: len(simulator.sim.cloud_init_runs(int(instance_id))) >= boots + 1,
        what="the seed to be fetched again at the next boot",
    )


def test_security_groups_follow_visa_add_and_remove(created: dict[str, Any], service: LiveService, simulator: Any):
    instance_id = created["id"]
    path = f"/api/instances/{instance_id}/security_groups"

    api = service.runtime.connection.client()

    def proxmox_groups() -> list[str]:
        node = vm_of(simulator, instance_id).node
        rules = api.nodes(node).qemu(int(instance_id)).firewall.rules.get()
        return sorted(r["action"] for r in rules if r.get("type") == "group")

    wait_for(lambda: proxmox_groups() == ["default"], what="the create-time group")
    assert service.client.get(path).json() == ["default"]
    assert service.client.post(path, json={"name": "ssh"}).status_code == 200
    assert service.client.get(path).json() == ["default", "ssh"]
    wait_for(lambda: proxmox_groups() == ["default", "ssh"], what="ssh group in Proxmox")
    assert service.client.post(path + "/remove", json={"name": "default"}).status_code == 200
    assert service.client.get(path).json() == ["ssh"]
    wait_for(lambda: proxmox_groups() == ["ssh"], what="default group removed in Proxmox")
    bad = service.client.post(path, json={"name": "no-such-group"})
    assert bad.status_code == 400 and bad.json()["code"] == "unknown_security_group"
    assert service.client.post(path, json={}).status_code == 400


# In the service's environment from the start, as a deployment's secrets are: the playbooks must not inherit it.
SERVICE_ONLY_SECRET = "service-only-secret-value"
os.environ["PROVISIONER_TEST_SERVICE_ONLY_SECRET"] = SERVICE_ONLY_SECRET


def test_no_secret_reaches_the_artifacts_or_events(created: dict[str, Any], service: LiveService, simulator: Any):
    secret = simulator.token_secret
    url = seed_url(simulator, created["id"])
    token = url.rstrip("/").rsplit("/", 1)[1]
    runs = Path(service.settings.state_dir) / "runs"
    files = [p for p in runs.rglob("*") if p.is_file()]
    assert files, "the runs keep their artifacts"
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert secret not in text, path
        assert token not in text, path
        assert SERVICE_ONLY_SECRET not in text and "PROVISIONER_TEST_SERVICE_ONLY_SECRET" not in text, path
    events = service.operator.get("/v1/jobs", params={"instance_id": created["id"]}).json()
    for job in events:
        dump = service.operator.get(f"/v1/jobs/{job['id']}/events").text
        assert secret not in dump and token not in dump


def test_jobs_are_visible_to_operators(created: dict[str, Any], service: LiveService):
    jobs = service.operator.get("/v1/jobs", params={"instance_id": created["id"]}).json()
    create = next(j for j in jobs if j["kind"] == "create")
    assert create["state"] == "successful" and create["result"]["address"]
    events = service.operator.get(f"/v1/jobs/{create['id']}/events").json()
    assert events and events[-1]["event"] == "playbook_on_stats"
    assert any(e["event"] == "runner_on_ok" for e in events)
    assert service.anonymous.get("/v1/jobs").status_code == 401


def test_delete_of_a_running_vm_in_one_call_removes_it_and_releases_its_seed(service: LiveService, simulator: Any):
    instance_id = service.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-2")).json()["id"]
    service.wait_state(instance_id, "ACTIVE")
    url = seed_url(simulator, instance_id)
    assert service.anonymous.get(url + "meta-data").status_code == 200
    assert service.client.delete(f"/api/instances/{instance_id}").status_code == 200
    assert service.instance(instance_id)["state"] == "DELETED"
    wait_for(lambda: vm_of(simulator, instance_id) is None, what="the VM to be destroyed")
    wait_for(lambda: service.client.get(f"/api/instances/{instance_id}").status_code == 404, what="deletion")
    assert service.anonymous.get(url + "meta-data").status_code == 404
    ids = [i["id"] for i in service.client.get("/api/instances/identifiers").json()]
    assert instance_id not in ids
    assert service.client.delete(f"/api/instances/{instance_id}").status_code == 404
