"""What a playbook run takes from its events: each host's outcome and the guest address the vm module returned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.jobs.outcome import ADDRESS, EventRecord, HostOutcome
from engine.jobs.redact import Redactor
from engine.jobs.runner import PlaybookRun


def run_for(tmp_path: Path, *hosts: str) -> tuple[PlaybookRun, list[EventRecord]]:
    sunk: list[EventRecord] = []
    run = PlaybookRun(
        ansible_dir=tmp_path,
        runs_dir=tmp_path,
        run_id="r",
        playbook="create.yml",
        hostvars={host: {} for host in hosts},
        env={},
        redactor=Redactor(["s3cr3t-token-value"]),
        timeout_s=60,
        sink=sunk.extend,
        flush_every_s=0,
    )
    run._hosts = {host: HostOutcome() for host in hosts}
    return run, sunk


def event(name: str, host: str, task: str, action: str, res: dict[str, Any]) -> dict[str, Any]:
    data = {"host": host, "task": task, "task_action": action, "resolved_action": action, "res": res}
    return {"event": name, "counter": 1, "event_data": data}


def test_the_address_is_the_vm_modules_result_whatever_the_task_is_called(tmp_path: Path) -> None:
    run, _ = run_for(tmp_path, "vm-1", "vm-2", "vm-3")
    run._on_event(event("runner_on_ok", "vm-1", "Converge the VM", "provisioner.proxmox.vm", {"address": "198.18.0.7"}))
    run._on_event(event("runner_on_ok", "vm-2", "Anything", "provisioner.proxmox.vm", {"changed": True}))
    facts = {"ansible_facts": {"proxmox_vm_address": "198.18.0.9"}}
    run._on_event(event("runner_on_ok", "vm-3", "Record the guest address", "ansible.builtin.set_fact", facts))
    assert run._hosts["vm-1"].facts == {ADDRESS: "198.18.0.7"}
    assert run._hosts["vm-2"].facts == {} and run._hosts["vm-2"].changed
    assert run._hosts["vm-3"].facts == {}  # a task's name or a fact is not the contract; the module's result is


def test_a_failure_is_its_hosts_only_and_its_message_is_redacted(tmp_path: Path) -> None:
    run, sunk = run_for(tmp_path, "vm-1", "vm-2")
    failure = {"msg": "seed http://198.18.0.1:4000/seed/s3cr3t-token-value/ unreachable"}
    run._on_event(event("runner_on_failed", "vm-1", "Converge the VM", "provisioner.proxmox.vm", failure))
    assert not run._hosts["vm-1"].ok and run._hosts["vm-2"].ok
    assert run._hosts["vm-1"].failed_task == "Converge the VM"
    assert "s3cr3t-token-value" not in (run._hosts["vm-1"].error or "")
    assert all("s3cr3t-token-value" not in str(record) for record in sunk) and sunk


def test_a_run_that_dies_before_its_play_ends_leaves_no_vm_done(tmp_path: Path) -> None:
    run, _ = run_for(tmp_path, "vm-1", "vm-2")
    run._on_event(event("runner_on_ok", "vm-1", "Converge the VM", "provisioner.proxmox.vm", {"changed": True}))
    killed = run._outcome("failed", -9)  # SIGKILL: no failure event, no final stats
    assert [(h.ok, h.unfinished) for h in killed.hosts.values()] == [(False, True), (False, True)]
    assert "ended before this VM was done (failed, exit code -9)" in (killed.hosts["vm-1"].error or "")

    finished, _ = run_for(tmp_path, "vm-1")
    finished._on_event(event("runner_on_ok", "vm-1", "Converge the VM", "provisioner.proxmox.vm", {}))
    finished._on_event({"event": "playbook_on_stats", "counter": 9, "event_data": {}})
    assert finished._outcome("successful", 0).hosts["vm-1"].ok
