"""inventory/proxmox.yml: the community.proxmox inventory plugin against the simulator, as operators run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.proxmox import ProxmoxConnection
from simulator import add_running_vms
from tests.conftest import ROOT


def ansible_inventory(simulator: Any, *args: str) -> subprocess.CompletedProcess[str]:
    connection = ProxmoxConnection(
        simulator.host, simulator.port, simulator.token_id, simulator.token_secret, 10, str(simulator.cafile)
    )
    env = {**os.environ, **connection.ansible_env(), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    binary = Path(sys.executable).parent / "ansible-inventory"
    return subprocess.run(
        [str(binary), "-i", str(ROOT / "inventory" / "proxmox.yml"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cluster(simulator: Any) -> Any:
    """The simulator with two running VMs tagged `provisioner`, VISA-INSTANCE-190000 on pve1 and -190001 on pve2."""
    simulator.call(_add(simulator))
    return simulator


async def _add(simulator: Any) -> None:
    add_running_vms(simulator.sim, 2, 190000, "VISA-INSTANCE")


@pytest.fixture(scope="module")
def inventory(cluster: Any) -> dict[str, Any]:
    result = ansible_inventory(cluster, "--list")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_groups_by_node_status_and_tag(inventory: dict[str, Any]):
    running = set(inventory["proxmox_all_running"]["hosts"])
    assert {"VISA-INSTANCE-190000", "VISA-INSTANCE-190001"} <= running
    assert set(inventory["proxmox_tag_provisioner"]["hosts"]) == {"VISA-INSTANCE-190000", "VISA-INSTANCE-190001"}
    assert "VISA-INSTANCE-190000" in inventory["proxmox_pve1_qemu"]["hosts"]
    assert "VISA-INSTANCE-190001" in inventory["proxmox_pve2_qemu"]["hosts"]
    facts = inventory["_meta"]["hostvars"]["VISA-INSTANCE-190000"]
    assert facts["proxmox_vmid"] == 190000
    assert "VISA-INSTANCE-190000" not in inventory.get("proxmox_all_stopped", {}).get("hosts", [])


def test_graph_works_and_prints_no_secret(cluster: Any):
    result = ansible_inventory(cluster, "--graph")
    assert result.returncode == 0, result.stderr
    assert "@proxmox_tag_provisioner:" in result.stdout
    assert cluster.token_secret not in result.stdout + result.stderr
