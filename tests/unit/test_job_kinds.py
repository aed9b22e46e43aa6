"""The job-kind table: each kind's playbook, the variables it sends (docs/contract.md §2) and its outcome's effect."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.jobs.kinds import KINDS, Context, apply_outcome, host_variables
from engine.jobs.outcome import HostOutcome
from engine.models import Instance, Job, JobKind, Lifecycle
from engine.seeds import SeedTokens
from engine.settings import Settings
from tests.conftest import ROOT

SEEDS = SeedTokens(b"k" * 32)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVmPnHqL3iOx0hB3fm4tJq0pS0KyfHlLQ0n8Qd3JYJb alice@laptop"
OLD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFJ1b2JlcnQgd2FzIGhlcmUgYW5kIGxlZnQgYWdhaW4uLi4 bob@old"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAb0x2lHbV3tZz9k4xq0sQyq5bHn2x0dP0x7i0H3m7Lp root@vm"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        insecure_no_auth=True,
        state_dir=tmp_path,
        metadata_server="http://198.18.0.1:4000/seed/",
        address_timeout_s=300,
        max_start_retry=7,
        vm_storage="ceph-vm",
    )


def instance(**values: object) -> Instance:
    fields = {"id": 100123, "vm_name": "VISA-INSTANCE-1", "node": "pve2", "cores": 2, "memory_mb": 4096,
              "disk_gb": 20, "seed_nonce": "n1", "security_groups": ["default"], "ssh_keys": [KEY],
              "ssh_keys_removed": [], "ssh_keys_pending": False, "lifecycle": Lifecycle.BUILDING}  # fmt: skip
    return Instance(**(fields | values))


def test_every_kind_runs_a_playbook_of_the_repository() -> None:
    assert set(KINDS) == set(JobKind)
    assert all((ROOT / "playbooks" / kind.playbook).is_file() for kind in KINDS.values())
    assert [k for k, kind in KINDS.items() if not kind.rerun_after_crash] == [JobKind.REBOOT]


def test_a_create_sends_the_whole_vm_in_its_roles_own_variables(settings: Settings) -> None:
    job = Job(kind=JobKind.CREATE, params={"template": "9000", "template_node": "pve1", "full_clone": True})
    assert host_variables(Context(settings, SEEDS), job, instance()) == {
        "proxmox_vm_vmid": 100123,
        "proxmox_vm_name": "VISA-INSTANCE-1",
        "proxmox_vm_node": "pve2",
        "proxmox_vm_template_vmid": 9000,
        "proxmox_vm_template_node": "pve1",
        "proxmox_vm_full_clone": True,
        "proxmox_vm_cores": 2,
        "proxmox_vm_memory_mb": 4096,
        "proxmox_vm_disk_gb": 20,
        "proxmox_vm_tags": ["provisioner"],
        "proxmox_vm_description": "managed-by=provisioner instance=100123",
        "proxmox_vm_cloud_init_seed_url": f"http://198.18.0.1:4000/seed/{SEEDS.token(instance())}/",
        "proxmox_vm_firewall_groups": ["default"],
        "proxmox_vm_wait_for_address": True,
        "proxmox_vm_address_timeout": 300,
        "proxmox_vm_start_retries": 7,
        "proxmox_vm_storage": "ceph-vm",
        "discovery_host_name": "VISA-INSTANCE-1",
        "discovery_host_groups": ["visa"],
        "discovery_instance_id": "100123",
    }
    linked = Job(kind=JobKind.CREATE, params={"template": "9000", "template_node": "pve1", "full_clone": False})
    # A linked clone stays by its base.
    assert "proxmox_vm_storage" not in host_variables(Context(settings, SEEDS), linked, instance())


def test_every_variable_a_kind_sends_is_one_its_playbooks_roles_declare(settings: Settings) -> None:
    declared: set[str] = set()
    for role in (ROOT / "roles").iterdir():
        specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
        declared |= set(specs["argument_specs"]["main"]["options"])
    params = {"template": "9000", "template_node": "pve1", "full_clone": True, "add": [], "remove": []}
    for kind in JobKind:
        sent = host_variables(Context(settings, SEEDS), Job(kind=kind, params=params), instance())
        assert set(sent) <= declared, (kind, set(sent) - declared)


POWER_UP = {
    "proxmox_vm_power_vmid": 100123,
    "proxmox_vm_power_wait_for_address": True,
    "proxmox_vm_power_address_timeout": 300,
}


@pytest.mark.parametrize(
    ("kind", "params", "sent"),
    [
        (JobKind.START, {}, POWER_UP),
        (JobKind.REBOOT, {}, POWER_UP),
        (JobKind.SHUTDOWN, {}, {"proxmox_vm_power_vmid": 100123, "proxmox_vm_power_force": False}),
        (JobKind.STOP, {}, {"proxmox_vm_power_vmid": 100123, "proxmox_vm_power_force": True}),
        (JobKind.DELETE, {}, {"proxmox_vm_destroy_vmid": 100123, "proxmox_vm_destroy_name": "VISA-INSTANCE-1",
                              "proxmox_vm_destroy_force": True, "discovery_host_name": "VISA-INSTANCE-1"}),
        (JobKind.FIREWALL, {"add": ["web"], "remove": ["ssh"]},
         {"proxmox_vm_firewall_vmid": 100123, "proxmox_vm_firewall_groups_add": ["web"],
          "proxmox_vm_firewall_groups_remove": ["ssh"]}),
    ],
)  # fmt: skip
def test_the_other_kinds_send_the_vm_and_what_they_change(
    settings: Settings, kind: JobKind, params: dict, sent: dict
) -> None:
    assert host_variables(Context(settings, SEEDS), Job(kind=kind, params=params), instance()) == sent


def test_outcomes_change_the_instance_as_their_kind_says() -> None:
    built = instance()
    apply_outcome(Job(kind=JobKind.CREATE), built, HostOutcome(ok=True, facts={"address": "198.18.0.7"}))
    assert built.lifecycle == Lifecycle.PROVISIONED and built.address == "198.18.0.7"

    failed = instance()
    apply_outcome(Job(kind=JobKind.CREATE), failed, HostOutcome(ok=False, error="VM 100123: template 9000 is gone"))
    assert failed.lifecycle == Lifecycle.ERROR and failed.fault_details == "VM 100123: template 9000 is gone"

    rebooted = instance(lifecycle=Lifecycle.PROVISIONED, address="198.18.0.7")
    apply_outcome(Job(kind=JobKind.REBOOT), rebooted, HostOutcome(ok=True, facts={"address": "198.18.0.9"}))
    assert rebooted.lifecycle == Lifecycle.PROVISIONED and rebooted.address == "198.18.0.9"

    gone = instance(lifecycle=Lifecycle.DELETING, address="198.18.0.7")
    apply_outcome(Job(kind=JobKind.DELETE), gone, HostOutcome(ok=True))
    assert gone.lifecycle == Lifecycle.DELETED and gone.address is None and gone.deleted_at is not None

    kept = instance(lifecycle=Lifecycle.DELETING, address="198.18.0.7")
    apply_outcome(Job(kind=JobKind.DELETE), kept, HostOutcome(ok=False, error="locked"))
    assert kept.lifecycle == Lifecycle.DELETING and kept.address == "198.18.0.7"


def test_a_vm_that_is_up_is_provisioned_even_when_only_its_registration_failed() -> None:
    up = instance()
    registry_down = HostOutcome(
        ok=False,
        error="the discovery registry at http://r did not answer: timed out",
        failed_action="provisioner.discovery.host",
        facts={"address": "198.18.0.7"},
    )
    apply_outcome(Job(kind=JobKind.CREATE), up, registry_down)
    assert (up.lifecycle, up.address, up.registration_pending) == (Lifecycle.PROVISIONED, "198.18.0.7", True)

    never_up = instance()
    no_address = HostOutcome(ok=False, error="no address", failed_action="provisioner.discovery.host")
    apply_outcome(Job(kind=JobKind.CREATE), never_up, no_address)
    assert never_up.lifecycle == Lifecycle.ERROR

    apply_outcome(Job(kind=JobKind.REGISTER), up, HostOutcome(ok=True))
    assert not up.registration_pending


def test_a_registration_sends_the_discovery_roles_own_variables(settings: Settings) -> None:
    registered = instance(lifecycle=Lifecycle.PROVISIONED, address="198.18.0.7")
    assert host_variables(Context(settings, SEEDS), Job(kind=JobKind.REGISTER), registered) == {
        "discovery_host_name": "VISA-INSTANCE-1",
        "discovery_host_address": "198.18.0.7",
        "discovery_host_groups": ["visa"],
        "discovery_instance_id": "100123",
    }


def test_a_key_change_logs_in_to_the_guest_with_the_provisioners_key_and_its_pinned_host_key(
    settings: Settings,
) -> None:
    running = instance(
        lifecycle=Lifecycle.PROVISIONED, address="198.18.0.7", host_key=HOST_KEY, ssh_keys_removed=[OLD_KEY]
    )
    assert host_variables(Context(settings, SEEDS), Job(kind=JobKind.KEYS), running) == {
        "guest_ssh_keys_vmid": 100123,
        "guest_ssh_keys_address": "198.18.0.7",
        "guest_ssh_keys_user": "visa",
        "guest_ssh_keys_present": [KEY],
        "guest_ssh_keys_absent": [OLD_KEY],
        "guest_ssh_keys_private_key_file": str(settings.state_dir / "guest_ed25519"),
        "guest_ssh_keys_host_key": HOST_KEY,
        "guest_ssh_keys_timeout": 300,
    }


def test_a_start_carries_the_keys_only_when_a_change_waits_for_it(settings: Settings) -> None:
    waiting = instance(lifecycle=Lifecycle.PROVISIONED, login_user="alice", ssh_keys_pending=True)
    sent = host_variables(Context(settings, SEEDS), Job(kind=JobKind.START), waiting)
    assert sent.items() >= POWER_UP.items() and sent["guest_ssh_keys_user"] == "alice"
    assert "guest_ssh_keys_address" not in sent  # start.yml takes the address the VM comes up with
    off = settings.model_copy(update={"guest_access": False})
    assert host_variables(Context(off, SEEDS), Job(kind=JobKind.START), waiting) == POWER_UP


@pytest.mark.parametrize(
    ("kind", "outcome", "pending"),
    [
        (JobKind.KEYS, HostOutcome(ok=True, facts={"guest_ssh_keys_applied": True}), False),
        (JobKind.KEYS, HostOutcome(ok=True, facts={"guest_ssh_keys_applied": False}), True),  # the VM was stopped
        (JobKind.KEYS, HostOutcome(ok=True, facts={"guest_ssh_keys_applied": "False"}), True),
        (JobKind.KEYS, HostOutcome(ok=False, error="unreachable"), None),  # as it was
        (JobKind.START, HostOutcome(ok=True, facts={"guest_ssh_keys_applied": True}), False),
        (JobKind.START, HostOutcome(ok=True), None),  # a start that carried no keys
    ],
)
def test_a_key_outcome_says_whether_the_next_start_must_apply_the_keys(
    kind: JobKind, outcome: HostOutcome, pending: bool | None
) -> None:
    for before in (True, False):
        vm = instance(lifecycle=Lifecycle.PROVISIONED, ssh_keys_pending=before)
        apply_outcome(Job(kind=kind), vm, outcome)
        assert vm.ssh_keys_pending == (before if pending is None else pending)
