"""A VISA instance in the discovery registry: registered once ACTIVE by the create playbook, listed by the operators'
inventory, deregistered when deleted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from discovery.client import ProviderAuth
from tests.conftest import ROOT, start_service, visa_body, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]


def test_a_visa_instance_is_registered_once_active_and_deregistered_when_deleted(tmp_path: Path, simulator: Any):
    from discovery.settings import RegistrySettings

    read_token = "e2e-read-token-0123456789"
    registry = RegistrySettings(host="127.0.0.1", port=0, read_token=read_token, state_dir=tmp_path / "registry")
    live = start_service(tmp_path, simulator, registry=registry, discovery_enabled=True)
    try:
        url = live.runtime.registry.url
        headers = {"Authorization": f"Bearer {read_token}"}
        created = live.client.post("/api/instances", json=visa_body(name="VISA-INSTANCE-77"))
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        active = live.wait_state(instance_id, "ACTIVE")

        hosts = httpx.get(f"{url}/api/v1/hosts", params={"group": "visa"}, headers=headers).json()
        mine = [h for h in hosts if h["name"] == "VISA-INSTANCE-77"]
        assert len(mine) == 1 and mine[0]["address"] == active["address"] and mine[0]["instance_id"] == instance_id
        assert mine[0]["groups"] == ["visa"] and mine[0]["ssh_user"] == "visa"

        intruder = httpx.post(
            f"{url}/api/v1/hosts",
            json={"name": "VISA-INSTANCE-77", "address": "10.0.3.17", "groups": ["visa"]},
            auth=ProviderAuth(Ed25519PrivateKey.generate()),
        )
        assert intruder.status_code == 403 and intruder.json()["code"] == "AUTH_002"

        env = {
            **os.environ,
            **live.discovery_env(),
            "DISCOVERY_READ_TOKEN": read_token,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        }
        binary = Path(sys.executable).parent / "ansible-inventory"
        listed = subprocess.run(
            [str(binary), "-i", "inventory/discovery.yml", "--list"], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert listed.returncode == 0, listed.stderr
        inventory = json.loads(listed.stdout)
        assert "VISA-INSTANCE-77" in inventory["visa"]["hosts"]
        address = inventory["_meta"]["hostvars"]["VISA-INSTANCE-77"]["ansible_host"]
        assert address == {"__ansible_unsafe": active["address"]}  # registered values are never templated

        assert live.client.delete(f"/api/instances/{instance_id}").is_success
        wait_for(
            lambda: live.client.get(f"/api/instances/{instance_id}").status_code == 404, timeout=120, what="delete"
        )
        hosts = httpx.get(f"{url}/api/v1/hosts", params={"group": "visa"}, headers=headers).json()
        assert [h for h in hosts if h["name"] == "VISA-INSTANCE-77"] == []
    finally:
        live.stop()
