"""playbooks/verify.yml with the guest checks, against a real Debian guest that VISA created.

The operator's way: an ansible-playbook process with the PROXMOX_* environment and the VM described by extra vars
(docs/contract.md section 2), logging in to the guest with the site key and trusting only the host key the guest
phoned home. What was requested scores 100; a wrong key or wrong metadata costs exactly the weights of the checks
that see it (roles/verify/defaults/main.yml), as the role's score formula computes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.guestkey import GuestKey
from engine.models import Instance
from tests.conftest import ROOT, LiveService, ansible_env, start_service, visa_body
from tests.helpers.guest_ssh import KeyPair

pytestmark = [pytest.mark.slow, pytest.mark.real_guest, pytest.mark.xdist_group("real_guests")]

BOOT_COMMAND = """#!/bin/bash
set -e
echo "owner=$(cloud-init query ds.meta_data.meta.owner)" > /var/tmp/bootcommand.out
"""
WEIGHTS: dict[str, int] = yaml.safe_load((ROOT / "roles/verify/defaults/main.yml").read_text())["verify_weights"]
GUEST_CHECKS = [
    "guest_ssh_keys",
    "guest_sudo",
    "guest_hostname",
    "guest_metadata",
    "guest_cloud_init",
    "guest_user_data",
]


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, guest_cluster: Any, guest_keys: dict[str, KeyPair]
) -> Iterator[LiveService]:
    live = start_service(
        tmp_path_factory.mktemp("service"),
        guest_cluster,
        ssh_public_keys=guest_keys["site"].public,
        address_timeout_s=180,
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def instance(service: LiveService, guest_keys: dict[str, KeyPair]) -> Iterator[Instance]:
    """One VISA instance, ACTIVE, whose guest phoned home (cloud-init's final stage ran, its host key is known)."""
    body = visa_body(
        name="VISA-INSTANCE-VERIFY",
        image="9000",
        bootCommand=BOOT_COMMAND,
        metadata={"owner": "alice", "id": "7", "instruments": "", "sshPublicKey": guest_keys["user"].public},
    )
    response = service.client.post("/api/instances", json=body)
    assert response.status_code == 201, response.text
    instance_id = str(response.json()["id"])
    service.wait_state(instance_id, "ACTIVE", timeout=240)
    row = service.phoned_home(instance_id, timeout=120)
    assert row.host_key and row.host_key.startswith("ssh-ed25519 "), row.host_key
    yield row
    service.client.delete(f"/api/instances/{instance_id}")


def requested(service: LiveService, instance: Instance, guest_keys: dict[str, KeyPair]) -> dict[str, Any]:
    """The verify role's variables for what VISA asked for, as an operator describes the VM, with the guest checks
    on."""
    return {
        "verify_vmid": instance.id,
        "verify_name": instance.vm_name,
        "verify_node": instance.node,
        "verify_cores": instance.cores,
        "verify_memory_mb": instance.memory_mb,
        "verify_disk_gb": instance.disk_gb,
        "verify_address": instance.address,
        "verify_firewall_groups": list(instance.security_groups),
        "verify_seed_url": f"{service.settings.seed_base_url}{service.seed_token(str(instance.id))}/",
        "verify_user": service.settings.cloud_init_user,
        "verify_ssh_keys": list(instance.ssh_keys),
        "verify_metadata": dict(instance.meta),
        "verify_user_data": instance.boot_command,
        "verify_guest": True,
        "verify_guest_private_key_file": str(guest_keys["site"].private),
        "verify_guest_host_key": instance.host_key,
    }


def verify(guest_cluster: Any, tmp_path: Path, variables: dict[str, Any], token: str) -> dict[str, Any]:
    """Run playbooks/verify.yml; its verify_result (from the json callback). The run must not show the token."""
    extra = tmp_path / "vm.json"
    extra.write_text(json.dumps(variables))
    extra.chmod(0o600)
    run = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "playbooks/verify.yml", "-e", f"@{extra}"],
        cwd=ROOT,
        env={**ansible_env(guest_cluster), "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert token not in run.stdout + run.stderr, "the run showed the seed token"
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    tasks = [task for play in json.loads(run.stdout)["plays"] for task in play["tasks"]]
    recorded = [t for t in tasks if t["task"]["name"].endswith("score | Record the result")]
    assert len(recorded) == 1
    return recorded[0]["hosts"]["localhost"]["ansible_facts"]["verify_result"]


def expected_score(ran: list[str], failed: list[str]) -> int:
    """The role's formula: 100 x weight passed / weight that ran, rounded down."""
    total = sum(WEIGHTS[name] for name in ran)
    return 100 * (total - sum(WEIGHTS[name] for name in failed)) // total


def failed(result: dict[str, Any]) -> list[str]:
    return [check["name"] for check in result["checks"] if not check["pass"]]


def test_verify_scores_a_real_guest_from_inside(
    guest_cluster: Any, service: LiveService, instance: Instance, guest_keys: dict[str, KeyPair], tmp_path: Path
) -> None:
    wanted = requested(service, instance, guest_keys)
    token = service.seed_token(str(instance.id))
    guest_key = GuestKey.load(service.settings.guest_key_path).public  # the provisioner's own, in every guest
    assert wanted["verify_ssh_keys"] == [guest_keys["site"].public, guest_key, guest_keys["user"].public]

    result = verify(guest_cluster, tmp_path, wanted, token)
    ran = [check["name"] for check in result["checks"]]
    assert result["score"] == 100 and result["passed"], result
    assert ran[-len(GUEST_CHECKS) :] == GUEST_CHECKS, ran
    assert len(ran) == len(WEIGHTS), "every check runs"
    actual = {check["name"]: check["actual"] for check in result["checks"]}
    assert actual["guest_hostname"] == instance.vm_name.lower()
    assert actual["guest_cloud_init"].startswith("status done (exit 0)"), actual  # Debian 12: cloud-init 22.4
    assert json.loads(actual["guest_metadata"]) == instance.meta

    # The user key swapped for a stranger's: the seed and the guest both lack it (and the guest has one more).
    wrong_key = {**wanted, "verify_ssh_keys": [guest_keys["site"].public, guest_keys["stranger"].public]}
    result = verify(guest_cluster, tmp_path, wrong_key, token)
    assert failed(result) == ["seed_ssh_keys", "guest_ssh_keys"], result
    assert result["score"] == expected_score(ran, ["seed_ssh_keys", "guest_ssh_keys"]) == 89

    # Other metadata: what the seed serves and what cloud-init in the guest has both differ.
    wrong_meta = {**wanted, "verify_metadata": {**instance.meta, "owner": "mallory"}}
    result = verify(guest_cluster, tmp_path, wrong_meta, token)
    assert failed(result) == ["seed_meta_data", "guest_metadata"], result
    assert result["score"] == expected_score(ran, ["seed_meta_data", "guest_metadata"]) == 92
