"""Operator VMs on real Debian guests (systemd-nspawn) behind the simulator's Proxmox API: /v1/vms and the CLI.

Users log in over SSH with their own keys, trusting only the host key the guest phoned home. Key changes on a running
guest are playbooks/keys.yml logging in with the provisioner's own guest key; a stopped VM gets them at its start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.models import TokenRole
from engine.tokens import Tokens
from tests.conftest import ROOT, LiveService, start_service, wait_for
from tests.helpers.guest_ssh import GuestSSH, KeyPair
from tests.helpers.operator_vms import fingerprint, wait_vm

pytestmark = [pytest.mark.slow, pytest.mark.real_guest, pytest.mark.xdist_group("real_guests")]

BOOT_S = 240
USER_DATA = '#!/bin/bash\nset -e\necho "user-data ran as $(id -un)" > /var/tmp/user-data.out\n'


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("operator-keys")
    return {name: KeyPair.generate(directory, name) for name in ("site", "first", "second", "third", "fourth")}


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, guest_cluster: Any, keys: dict[str, KeyPair]
) -> Iterator[LiveService]:
    live = start_service(
        tmp_path_factory.mktemp("service"),
        guest_cluster,
        ssh_public_keys=keys["site"].public,
        address_timeout_s=180,
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def token(service: LiveService) -> str:
    return Tokens(service.runtime.db).create("alice", TokenRole.OPERATOR)


@pytest.fixture(scope="module")
def alice(service: LiveService, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client


def wait_job(alice: httpx.Client, job_id: str, timeout: float = BOOT_S) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = alice.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in ("successful", "failed", "error", "canceled") else None

    job = wait_for(ended, timeout=timeout, what=f"job {job_id}")
    assert job["state"] == "successful", job
    return job  # type: ignore[no-any-return]


def logged_in(tmp_path: Path, vm: dict[str, Any], key: KeyPair) -> GuestSSH:
    return GuestSSH(tmp_path, vm["ssh"]["host"], vm["ssh"]["user"], key, vm["ssh"]["host_key"])


def test_an_operator_vm_is_a_guest_whose_keys_change_while_it_runs_and_while_it_is_stopped(
    service: LiveService, alice: httpx.Client, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    body = {
        "name": "alice-guest",
        "image": "9000",
        "size": "small",
        "user": "alice",
        "ssh_keys": [keys["first"].public, keys["second"].public],
        "user_data": USER_DATA,
    }
    accepted = alice.post("/v1/vms", json=body)
    assert accepted.status_code == 202, accepted.text
    vm_id = accepted.json()["vm"]["id"]
    wait_vm(alice, vm_id, "running", BOOT_S)
    service.phoned_home(vm_id, BOOT_S)
    vm = alice.get(f"/v1/vms/{vm_id}").json()
    assert vm["ssh"]["user"] == "alice" and vm["ssh"]["host_key"].startswith("ssh-ed25519 ")

    first, second = logged_in(tmp_path, vm, keys["first"]), logged_in(tmp_path, vm, keys["second"])
    first.wait(BOOT_S)
    assert first.check("id -un").strip() == "alice" and second.check("id -un").strip() == "alice"
    assert first.check("cat /var/tmp/user-data.out").strip() == "user-data ran as root"
    third = logged_in(tmp_path, vm, keys["third"])
    assert third.run("true").returncode != 0, "a key the VM was not given"

    # The cloud-init output, read over SSH by the provisioner, with the seed URL's token masked.
    page = alice.get(f"/v1/vms/{vm_id}/logs").json()
    assert page["cloud_init"]["error"] is None, page["cloud_init"]
    output = page["cloud_init"]["output"]
    assert "Cloud-init v. " in output and " finished at " in output, output[-2000:]
    assert service.runtime.seeds.token(service.stored(vm_id)) not in output

    # A third key on the running guest: the keys job logs in and adds it.
    added = alice.post(f"/v1/vms/{vm_id}/ssh-keys", json={"key": keys["third"].public})
    assert added.status_code == 202, added.text
    wait_job(alice, added.json()["job"]["id"])
    assert third.check("id -un").strip() == "alice"
    assert alice.get(f"/v1/vms/{vm_id}/ssh-keys").json()["sync"] == "applied"

    # The first one removed: refused from then on; the others still log in.
    removed = alice.delete(f"/v1/vms/{vm_id}/ssh-keys/{fingerprint(keys['first'].public)}")
    assert removed.status_code == 202, removed.text
    wait_job(alice, removed.json()["job"]["id"])
    assert first.run("true").returncode != 0, "a removed key must not log in"
    assert second.check("true") == "" and third.check("true") == ""

    # Stopped: a fourth key waits for the start, which applies it once the guest is up.
    assert alice.post(f"/v1/vms/{vm_id}/stop").status_code == 202
    wait_vm(alice, vm_id, "stopped", BOOT_S)
    waiting = alice.post(f"/v1/vms/{vm_id}/ssh-keys", json={"key": keys["fourth"].public})
    wait_job(alice, waiting.json()["job"]["id"])
    assert alice.get(f"/v1/vms/{vm_id}/ssh-keys").json()["sync"] == "next_start"
    started = alice.post(f"/v1/vms/{vm_id}/start")
    wait_job(alice, started.json()["job"]["id"])
    assert alice.get(f"/v1/vms/{vm_id}/ssh-keys").json()["sync"] == "applied"
    assert logged_in(tmp_path, vm, keys["fourth"]).check("id -un").strip() == "alice"
    assert first.run("true").returncode != 0, "still removed after the restart"

    assert alice.delete(f"/v1/vms/{vm_id}").status_code == 202
    wait_for(lambda: alice.get(f"/v1/vms/{vm_id}").status_code == 404, timeout=120, what="the VM to go")


def test_a_lease_of_a_minute_deletes_the_guest(
    service: LiveService, guest_cluster: Any, alice: httpx.Client, keys: dict[str, KeyPair]
) -> None:
    body = {"name": "alice-lease", "image": "9000", "size": "small", "ssh_keys": [keys["first"].public], "lease": 60}
    vm = alice.post("/v1/vms", json=body).json()["vm"]
    assert vm["expires_at"] is not None
    wait_vm(alice, vm["id"], "running", BOOT_S)
    wait_for(lambda: alice.get(f"/v1/vms/{vm['id']}").status_code == 404, timeout=180, what="the lease to end")
    assert int(vm["id"]) not in guest_cluster.sim.guests.backend.vmids(), "the guest is gone too"
    jobs = service.operator.get("/v1/jobs", params={"instance_id": vm["id"]}).json()
    assert [j["kind"] for j in jobs] == ["delete", "create"]


def test_the_cli_creates_with_wait_lists_sshes_and_deletes(
    service: LiveService, token: str, keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PROVISIONER_URL": service.base,
        "PROVISIONER_TOKEN": token,
    }

    def vm(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "provisioner.cli", "vm", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)

    made = vm("create", "cli-guest", "--image", "9002", "--ssh-key", str(keys["second"].private) + ".pub", "--wait")
    assert made.returncode == 0, made.stderr
    assert "Converge the VM" in made.stderr, "the tasks were shown as they ran"
    listed = vm("list", "--json")
    vm_id = next(v["id"] for v in json.loads(listed.stdout) if v["name"] == "cli-guest")
    service.phoned_home(vm_id, BOOT_S)
    ssh = wait_for(
        lambda: (r := vm("ssh", vm_id, "-i", str(keys["second"].private), "--", "id", "-un")).returncode == 0 and r,
        timeout=BOOT_S,
        what="a login through `vm ssh`",
    )
    assert ssh.stdout.strip() == service.settings.cloud_init_user
    assert vm("ssh", vm_id, "-i", str(keys["second"].private), "--", "true").returncode == 0
    shown = vm("keys", vm_id)
    assert shown.returncode == 0 and fingerprint(keys["second"].public) in shown.stdout
    gone = vm("delete", vm_id, "--wait")
    assert gone.returncode == 0, gone.stderr
    assert vm("show", vm_id).returncode == 2
