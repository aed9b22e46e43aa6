"""provisioner.proxmox.vm against the simulator: ad-hoc `ansible localhost -m provisioner.proxmox.vm` runs, as an
operator makes them (its pure decisions: tests/unit/test_vm_module.py)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.conftest import MUTATING, ROOT, SITE_KEY, USER_KEY, ansible_env

SEED = "http://127.0.0.1:4000/seed/s3cr3t-seed-token-for-tests/"
SERIAL = base64.b64encode(f"ds=nocloud-net;s={SEED}".encode()).decode()
SPEC = {
    "name": "module-test",
    "node": "pve2",
    "template_vmid": 9001,
    "template_node": "pve2",
    "cores": 2,
    "memory_mb": 2048,
    "disk_gb": 10,
    "tags": ["provisioner", "test"],
    "description": "managed-by=tests",
    "cloud_init_seed_url": SEED,
    "firewall_groups": ["ssh", "web"],
    "state": "started",
    "wait_for_address": True,
}


def run_module(simulator: Any, *flags: str, **args: Any) -> tuple[dict[str, Any], str]:
    """One ad-hoc run of the module (json callback); returns its result and the raw output."""
    env = {**ansible_env(simulator), "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json"}
    binary = Path(sys.executable).parent / "ansible"
    command = [str(binary), "localhost", "-m", "provisioner.proxmox.vm", "-a", json.dumps(args), *flags]
    command += ["-e", f"ansible_python_interpreter={sys.executable}"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    result = json.loads(done.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return result, output


def mutations_since(simulator: Any, since: int) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in list(simulator.sim.requests)[since:] if m in MUTATING]


@pytest.mark.slow
@pytest.mark.xdist_group("ansible")
class TestAgainstTheSimulator:
    def test_check_mode_on_a_new_vm_reports_what_the_create_then_does_and_changes_nothing(self, simulator: Any):
        before = len(simulator.sim.requests)
        planned, output = run_module(simulator, "--check", vmid=4610, **SPEC)
        assert planned["changed"] is True and planned["status"] == "absent"
        assert planned["changes"] == [
            "clone template 9001 on pve2 to pve2",
            "set cores, description, memory, smbios1, tags; delete the cloud-init drive ide2",
            "grow scsi0 from 3584M to 10G",
            "add firewall groups ssh, web",
            "start",
        ]
        assert mutations_since(simulator, before) == []
        assert simulator.sim.vm(4610) is None
        assert SEED not in output and SERIAL not in output
        created, _ = run_module(simulator, vmid=4610, **SPEC)
        assert created["changes"] == planned["changes"]

    def test_check_mode_on_an_existing_vm_reports_what_the_run_then_does(self, simulator: Any):
        run_module(simulator, vmid=4620, **dict(SPEC, state="present", firewall_groups=["ssh"], wait_for_address=False))
        wanted = dict(SPEC, cores=4, disk_gb=12, firewall_groups=["web"], wait_for_address=False)
        before = len(simulator.sim.requests)
        planned, _ = run_module(simulator, "--check", vmid=4620, **wanted)
        assert planned["changes"] == ["set cores", "grow scsi0 from 10G to 12G", "add firewall groups web", "start"]
        assert planned["status"] == "running" and mutations_since(simulator, before) == []
        done, _ = run_module(simulator, vmid=4620, **wanted)
        assert done["changes"] == planned["changes"] and simulator.sim.vm(4620).status == "running"

    def test_create_converges_everything_in_one_call_then_is_idempotent(self, simulator: Any):
        before = len(simulator.sim.requests)
        result, output = run_module(simulator, vmid=4611, **SPEC)
        assert result.get("failed") is not True, result
        assert result["changed"] is True and result["status"] == "running" and result["address"]
        assert result["changes"] == [
            "clone template 9001 on pve2 to pve2",
            "set cores, description, memory, smbios1, tags; delete the cloud-init drive ide2",
            "grow scsi0 from 3584M to 10G",
            "add firewall groups ssh, web",
            "start",
        ]
        assert SEED not in output and SERIAL not in output
        assert mutations_since(simulator, before) == [
            ("POST", "/api2/json/nodes/pve2/qemu/9001/clone"),
            ("PUT", "/api2/json/nodes/pve2/qemu/4611/config"),
            ("PUT", "/api2/json/nodes/pve2/qemu/4611/resize"),
            ("POST", "/api2/json/nodes/pve2/qemu/4611/firewall/rules"),
            ("POST", "/api2/json/nodes/pve2/qemu/4611/firewall/rules"),
            ("POST", "/api2/json/nodes/pve2/qemu/4611/status/start"),
        ]
        vm = simulator.sim.vm(4611)
        assert vm.status == "running" and "ide2" not in vm.config
        assert f"serial={SERIAL}" in vm.config["smbios1"] and "uuid=" in vm.config["smbios1"]
        rules = simulator.sim.firewall_config("vm", vmid=4611)["rules"]
        assert [(r["type"], r["action"]) for r in rules] == [("group", "ssh"), ("group", "web")]

        again_from = len(simulator.sim.requests)
        again, _ = run_module(simulator, vmid=4611, **SPEC)
        assert again["changed"] is False and again["changes"] == [] and again["address"] == result["address"]
        assert mutations_since(simulator, again_from) == []

    def test_bad_input_fails_with_every_problem_and_changes_nothing(self, simulator: Any):
        before = len(simulator.sim.requests)
        bad = dict(SPEC, cores=0, template_vmid=9000, firewall_groups=["ssh", "nope"])
        result, _ = run_module(simulator, vmid=4612, **bad)
        assert result["failed"] is True
        assert result["msg"] == ("VM 4612: cores must be at least 1 (got 0)"), (
            "input problems are reported before the cluster is asked"
        )
        result, _ = run_module(simulator, vmid=4612, **dict(bad, cores=1))
        assert result["msg"] == (
            "VM 4612: template 9000 is on node pve1, not on pve2; "
            "unknown firewall security group nope (the cluster has: default, ssh, web)"
        )
        assert mutations_since(simulator, before) == []

    def test_a_foreign_vm_on_the_vmid_is_never_adopted(self, simulator: Any):
        before = len(simulator.sim.requests)
        result, _ = run_module(simulator, vmid=9000, **dict(SPEC, template_vmid=9001))
        assert result["failed"] is True
        assert "VMID 9000 is qemu 'debian-12-cloud' (a template) on node pve1" in result["msg"]
        assert mutations_since(simulator, before) == []

    def test_lock_errors_and_proxy_errors_are_retried_with_backoff(self, simulator: Any):
        before = len(simulator.sim.requests)
        simulator.sim.fail("POST", "/nodes/pve2/qemu/9001/clone", error="config_lock_timeout", times=1)
        simulator.sim.fail("GET", "/nodes/pve2/qemu/4613/config", status=503, message="busy", times=1)
        simulator.sim.fail("POST", "/nodes/pve2/qemu/4613/status/start", error="config_lock_timeout", times=1)
        result, _ = run_module(simulator, vmid=4613, **SPEC)
        assert result.get("failed") is not True, result
        assert result["retries"] == 3 and result["status"] == "running"
        clones = [p for m, p in mutations_since(simulator, before) if p.endswith("/qemu/9001/clone")]
        assert simulator.sim.vm(4613) is not None and len(clones) == 2  # refused once, then done

    def test_a_lock_that_outlasts_the_retry_budget_fails_with_pve_s_message(self, simulator: Any):
        simulator.sim.fail("POST", "/nodes/pve2/qemu/9001/clone", error="config_lock_timeout")
        try:
            result, _ = run_module(simulator, vmid=4614, **dict(SPEC, retry_timeout=2))
        finally:
            simulator.sim.failures.clear()
        assert result["failed"] is True
        assert result["msg"].startswith("VM 4614: cloning template 9001: 500")
        assert "can't lock file" in result["msg"] and simulator.sim.vm(4614) is None

    def test_security_groups_are_added_and_removed_on_an_existing_vm(self, simulator: Any):
        run_module(simulator, vmid=4615, **dict(SPEC, firewall_groups=["default"]))
        result, _ = run_module(simulator, vmid=4615, firewall_groups=["web"], firewall_groups_absent=["default"])
        assert result["changes"] == ["delete the firewall group rules at 0", "add firewall groups web"]
        rules = simulator.sim.firewall_config("vm", vmid=4615)["rules"]
        assert [(r["type"], r["action"]) for r in rules] == [("group", "web")]

    def test_power_states_use_pve_s_own_calls_and_are_idempotent(self, simulator: Any):
        run_module(simulator, vmid=4616, **SPEC)
        before = len(simulator.sim.requests)
        stopped, _ = run_module(simulator, vmid=4616, state="stopped", force=True)
        assert stopped["changes"] == ["stop"] and stopped["status"] == "stopped"
        again, _ = run_module(simulator, vmid=4616, state="stopped")
        assert again["changed"] is False
        restarted, _ = run_module(simulator, vmid=4616, state="restarted", wait_for_address=True)
        assert restarted["changes"] == ["start"] and restarted["address"]
        rebooted, _ = run_module(simulator, vmid=4616, state="restarted")
        assert rebooted["changes"] == ["reboot"]
        assert mutations_since(simulator, before) == [
            ("POST", "/api2/json/nodes/pve2/qemu/4616/status/stop"),
            ("POST", "/api2/json/nodes/pve2/qemu/4616/status/start"),
            ("POST", "/api2/json/nodes/pve2/qemu/4616/status/reboot"),
        ]
        assert simulator.sim.vm(4616).status == "running"

    def test_a_power_or_firewall_call_changes_only_what_it_was_given(self, simulator: Any):
        """Regression: such a call PUT agent=enabled=1 (and read the config) though it converges nothing else."""
        run_module(simulator, vmid=4619, **SPEC)
        simulator.sim.vm(4619).config["agent"] = "0"  # an operator turned the agent off
        before = len(simulator.sim.requests)
        stopped, _ = run_module(simulator, vmid=4619, state="stopped", force=True)
        grouped, _ = run_module(simulator, vmid=4619, state="stopped", firewall_groups=["default"])
        assert stopped["changes"] == ["stop"] and grouped["changes"] == ["add firewall groups default"]
        config = "/api2/json/nodes/pve2/qemu/4619/config"
        assert [m for m, p, _ in list(simulator.sim.requests)[before:] if p == config] == []
        assert simulator.sim.vm(4619).config["agent"] == "0"

    def test_absent_stops_then_deletes_once_and_never_touches_a_template(self, simulator: Any):
        run_module(simulator, vmid=4617, **SPEC)
        before = len(simulator.sim.requests)
        wrong, _ = run_module(simulator, vmid=4617, name="someone-else", state="absent")
        assert wrong["failed"] is True and wrong["msg"].endswith(
            "not VM 'someone-else' on node pve2; refusing to delete it"
        )
        template, _ = run_module(simulator, vmid=9000, state="absent")
        assert template["msg"] == (
            "VM 9000: VMID 9000 is qemu 'debian-12-cloud' (a template) on node pve1, not VM on node pve1; "
            "refusing to delete it"
        )
        planned, _ = run_module(simulator, "--check", vmid=4617, name="module-test", state="absent", force=True)
        assert planned["changes"] == ["stop", "delete with its disks"] and simulator.sim.vm(4617) is not None
        gone, _ = run_module(simulator, vmid=4617, name="module-test", state="absent", force=True)
        assert gone["changes"] == ["stop", "delete with its disks"] and gone["status"] == "absent"
        assert simulator.sim.vm(4617) is None
        assert not any("vm-4617-" in name for name in simulator.sim.storages["ceph-vm"].get("volumes", {}))
        again, _ = run_module(simulator, vmid=4617, state="absent")
        assert again["changed"] is False and again["status"] == "absent"
        assert [p for _, p in mutations_since(simulator, before)] == [
            "/api2/json/nodes/pve2/qemu/4617/status/stop",
            "/api2/json/nodes/pve2/qemu/4617",
        ]

    def test_native_cloud_init_sets_the_drive_user_keys_and_network_and_rejects_bad_keys(self, simulator: Any):
        native = {
            "name": "native-test",
            "node": "pve1",
            "template_vmid": 9000,
            "template_node": "pve1",
            "cloud_init_user": "debian",
            "cloud_init_ssh_keys": [SITE_KEY, USER_KEY],
            "cloud_init_ipconfig0": "ip=192.0.2.10/24,gw=192.0.2.1",
            "cloud_init_nameserver": "192.0.2.53",
        }
        before = len(simulator.sim.requests)
        bad, _ = run_module(simulator, vmid=4618, **dict(native, cloud_init_ssh_keys=[SITE_KEY, "ssh-rsa AAAAB3Nza"]))
        assert bad["failed"] is True and bad["msg"] == "VM 4618: cloud_init_ssh_keys #2: the key data is not base64"
        mixed, _ = run_module(simulator, vmid=4618, **dict(native, cloud_init_seed_url=SEED))
        assert mixed["failed"] is True and "excludes the native cloud-init options" in mixed["msg"]
        assert mutations_since(simulator, before) == []

        created, _ = run_module(simulator, vmid=4618, **native)
        assert created["changes"][1] == "set ciuser, ide2, ipconfig0, nameserver, sshkeys"
        config = simulator.sim.vm(4618).config
        assert config["ciuser"] == "debian" and config["ipconfig0"] == native["cloud_init_ipconfig0"]
        assert unquote(config["sshkeys"]) == f"{SITE_KEY}\n{USER_KEY}"
        assert config["ide2"].startswith("ceph-vm:") and "cloudinit" in config["ide2"]
        assert "serial=" not in config.get("smbios1", "")
        again, _ = run_module(simulator, vmid=4618, **native)
        assert again["changed"] is False, again["changes"]
