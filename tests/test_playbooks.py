"""The playbooks as operators run them (ansible-playbook, PROXMOX_* environment) against the simulator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, ansible_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]
FLEET = {4301: ("web-1", 2, 2048), 4302: ("web-2", 2, 2048), 4303: ("db-1", 4, 8192)}


def playbook(simulator: Any, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = ansible_env(simulator)
    binary = Path(sys.executable).parent / "ansible-playbook"
    command = [str(binary), "-i", "inventory/hosts.yml", f"playbooks/{name}", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def recap(output: str) -> dict[str, dict[str, int]]:
    hosts = {}
    for host, counts in re.findall(r"^(\S+)\s+: (ok=.*)$", output, re.M):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return hosts


def test_site_creates_the_fleet_idempotently_and_site_delete_removes_it(simulator: Any):
    first = playbook(simulator, "site.yml", "-e", "@examples/site.yml")
    assert first.returncode == 0, first.stdout[-3000:]
    for vmid, (name, cores, memory) in FLEET.items():
        vm = simulator.sim.vm(vmid)
        assert vm is not None and vm.name == name and vm.status == "running"
        assert int(vm.config["cores"]) == cores and int(vm.config["memory"]) == memory
    second = playbook(simulator, "site.yml", "-e", "@examples/site.yml")
    assert second.returncode == 0, second.stdout[-3000:]
    counts = recap(second.stdout)
    assert {f"vm-{vmid}" for vmid in FLEET} <= set(counts)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), counts
    gone = playbook(simulator, "site_delete.yml", "-e", "@examples/site.yml")
    assert gone.returncode == 0, gone.stdout[-3000:]
    assert all(simulator.sim.vm(vmid) is None for vmid in FLEET)


def test_bad_input_fails_before_any_change(simulator: Any):
    before = len(simulator.sim.requests)
    result = playbook(simulator, "create.yml", "-e", "@examples/vm.yml", "-e", "vm_cores=0")
    assert result.returncode != 0
    assert "cores must be at least 1 (got 0)" in result.stdout
    assert [r for r in list(simulator.sim.requests)[before:] if r[0] in ("POST", "PUT", "DELETE")] == []
