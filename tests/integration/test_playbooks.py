"""The playbooks as operators run them (ansible-playbook, PROXMOX_* environment) against the simulator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, ansible_env, recap

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ansible")]


def playbook(simulator: Any, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = ansible_env(simulator)
    binary = Path(sys.executable).parent / "ansible-playbook"
    command = [str(binary), "-i", "inventory/hosts.yml", f"playbooks/{name}", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


BAD_INPUT = {
    "cores 0": ({"proxmox_vm_cores": 0}, "VM 4242: cores must be at least 1 (got 0)"),
    "unknown node": (
        {"proxmox_vm_node": "pve9"},
        "VM 4242: node 'pve9' is not a node of the cluster (nodes: pve1, pve2)",
    ),
    "missing template": ({"proxmox_vm_template_vmid": 9999}, "VM 4242: template 9999 does not exist"),
    "malformed SSH key": (
        {
            "proxmox_vm_cloud_init_seed_url": "",
            "proxmox_vm_cloud_init_ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA"],
        },
        "VM 4242: cloud_init_ssh_keys #1: malformed ssh-ed25519 key",
    ),
    "unknown security group": ({"proxmox_vm_firewall_groups": ["db"]}, "unknown firewall security group db"),
}


@pytest.mark.parametrize("overrides, message", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_fails_with_a_clear_message_before_any_change(
    simulator: Any, overrides: dict[str, Any], message: str
):
    before = len(simulator.sim.requests)
    result = playbook(simulator, "create.yml", "-e", "@examples/vm.yml", "-e", json.dumps(overrides))
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-2000:]
    assert [r for r in list(simulator.sim.requests)[before:] if r[0] in ("POST", "PUT", "DELETE")] == []
    assert simulator.sim.vm(4242) is None


def test_example_inventory_creates_idempotently_verifies_and_deletes_a_group(simulator: Any):
    """inventory/example as its README says: -e target=<group> picks a batch, group_vars fill in the rest."""
    web = {4801: ("web-1", "pve1"), 4802: ("web-2", "pve2")}
    example = ("-i", "inventory/example", "-e", "target=web")
    created = playbook(simulator, "create.yml", *example)
    assert created.returncode == 0, created.stdout[-3000:]
    for vmid, (name, node) in web.items():
        vm = simulator.sim.vm(vmid)
        assert vm is not None and (vm.name, vm.node, vm.status) == (name, node, "running")
        assert re.split(r"[,; ]+", vm.config["tags"]) == ["web"]
        assert (int(vm.config["cores"]), int(vm.config["memory"])) == (2, 2048)
    assert simulator.sim.vm(4811) is None, "db-1 is not in the target group"
    again = playbook(simulator, "create.yml", *example)
    assert again.returncode == 0, again.stdout[-3000:]
    counts = recap(again.stdout)
    assert set(counts) == {"web-1", "web-2"} and all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values())
    verified = playbook(simulator, "verify.yml", *example)
    assert verified.returncode == 0, verified.stdout[-3000:]
    assert verified.stdout.count("score 100 of 100 (threshold 70): passed") == len(web)
    deleted = playbook(simulator, "delete.yml", *example)
    assert deleted.returncode == 0, deleted.stdout[-3000:]
    assert all(simulator.sim.vm(vmid) is None for vmid in web)


def test_tags_run_single_steps_of_a_create(simulator: Any):
    """--tags proxmox_vm_<step> converges that step only (the role passes the module only its options)."""
    renamed = {"proxmox_vm_vmid": 4250, "proxmox_vm_name": "tagged-vm"}
    renamed |= {"proxmox_vm_destroy_vmid": 4250, "proxmox_vm_destroy_name": "tagged-vm"}
    vm = ("-e", "@examples/vm.yml", "-e", json.dumps(renamed))

    def run(*tags: str) -> subprocess.CompletedProcess[str]:
        done = playbook(simulator, "create.yml", *vm, *tags)
        assert done.returncode == 0, done.stdout[-3000:]
        return done

    run("--tags", "proxmox_vm_clone")
    cloned = simulator.sim.vm(4250)
    assert cloned.status == "stopped" and int(cloned.config["cores"]) == 1, "the clone alone keeps the template's spec"
    assert "serial=" not in cloned.config.get("smbios1", "")
    assert simulator.sim.firewall_config("vm", vmid=4250)["rules"] == []

    before = len(simulator.sim.requests)
    run("--tags", "proxmox_vm_spec,proxmox_vm_disk", "--check")
    assert [r for r in list(simulator.sim.requests)[before:] if r[0] in ("POST", "PUT", "DELETE")] == []
    run("--tags", "proxmox_vm_spec,proxmox_vm_disk")
    sized = simulator.sim.vm(4250)
    assert int(sized.config["cores"]) == 2 and ",size=8G" in sized.config["scsi0"]
    assert sized.status == "stopped" and "serial=" not in sized.config.get("smbios1", "")

    run("--tags", "proxmox_vm_seed,proxmox_vm_firewall")
    assert "serial=" in simulator.sim.vm(4250).config["smbios1"]
    assert len(simulator.sim.firewall_config("vm", vmid=4250)["rules"]) == 2
    assert simulator.sim.vm(4250).status == "stopped"

    started = run()
    assert simulator.sim.vm(4250).status == "running"
    assert recap(started.stdout)["localhost"]["changed"] == 1, "only the start was left to do"
    gone = playbook(simulator, "delete.yml", *vm)
    assert gone.returncode == 0, gone.stdout[-3000:]
