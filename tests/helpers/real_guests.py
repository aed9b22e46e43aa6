"""A VISA create as the real-guest tests and bench/real_guests.py make it, and the SSH login a user then does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import LiveService, visa_body
from tests.helpers.guest_ssh import GuestSSH, KeyPair

BOOT_COMMAND = """#!/bin/bash
set -e
{ echo "owner=$(cloud-init query ds.meta_data.meta.owner)"; echo "uid=$(id -u)"; } > /var/tmp/bootcommand.out
"""


def create(service: LiveService, name: str, image: str, user_key: KeyPair, **extra: Any) -> str:
    body = visa_body(
        name=name,
        image=image,
        bootCommand=BOOT_COMMAND,
        metadata={"owner": "alice", "id": "7", "instruments": "", "sshPublicKey": user_key.public},
        **extra,
    )
    response = service.client.post("/api/instances", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def login(service: LiveService, tmp_path: Path, instance_id: str, key: KeyPair, timeout: float = 120) -> GuestSSH:
    """SSH as the cloud-init user, once the guest phoned home, trusting the host key it sent."""
    instance = service.phoned_home(instance_id, timeout)
    assert instance.host_key and instance.host_key.startswith("ssh-ed25519 ")
    active = service.instance(instance_id)
    ssh = GuestSSH(tmp_path, active["address"], service.settings.cloud_init_user, key, instance.host_key)
    ssh.wait(timeout)
    return ssh
