"""The job kinds, in one table: for each, the playbook it runs, the variables it sends per VM and what its outcome
does to the instance. The service only records intents (a job row of a kind); the executor runs kinds with this.

The variables are the roles' own (docs/contract.md §2): a playbook passes them to its roles unrenamed, and what a
kind does not send is its role's default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.jobs.outcome import ADDRESS, KEYS_APPLIED, HostOutcome
from engine.models import Instance, Job, JobKind, Lifecycle, utcnow
from engine.seeds import SeedTokens
from engine.settings import Settings

# The tag every VM this provider creates carries (Proxmox tags and description), and the discovery registry group
# every VISA instance is registered in once it has its address.
MANAGED_TAG = "provisioner"
DISCOVERY_GROUP = "visa"
DISCOVERY_ACTION = "provisioner.discovery.host"

# The fault of an instance whose deletes kept failing for longer than PROVISIONER_DELETE_ERROR_AFTER.
DELETE_FAULT = "the instance could not be deleted"


def owner_tag(settings: Settings) -> str | None:
    """The tag that says a VM is this provider's (the reconciler adopts only VMs with it)."""
    return f"{MANAGED_TAG}-{settings.provider_id[:16]}" if settings.provider_id else None


@dataclass(frozen=True)
class Context:
    """What the kinds' variables are made of, besides the job and its instance."""

    settings: Settings
    seeds: SeedTokens


Variables = Callable[[Context, Job, Instance], dict[str, Any]]
Finish = Callable[[Job, Instance, HostOutcome], None]


@dataclass(frozen=True)
class Kind:
    playbook: str
    variables: Variables
    finish: Finish
    # Run again from the start after a crash of the service (the playbook is idempotent)? A reboot is not.
    rerun_after_crash: bool = True
    attempts: int = 1  # runs before the job fails (a failed run is retried with a growing backoff)


def _create_variables(context: Context, job: Job, instance: Instance) -> dict[str, Any]:
    settings = context.settings
    variables: dict[str, Any] = {
        "proxmox_vm_vmid": instance.id,
        "proxmox_vm_name": instance.vm_name,
        "proxmox_vm_node": instance.node,
        "proxmox_vm_template_vmid": int(job.params["template"]),
        "proxmox_vm_template_node": job.params["template_node"],
        "proxmox_vm_full_clone": bool(job.params["full_clone"]),
        "proxmox_vm_cores": instance.cores,
        "proxmox_vm_memory_mb": instance.memory_mb,
        "proxmox_vm_disk_gb": instance.disk_gb,
        "proxmox_vm_tags": [MANAGED_TAG, *([owner] if (owner := owner_tag(settings)) else [])],
        "proxmox_vm_description": f"managed-by={MANAGED_TAG} instance={instance.id}",
        "proxmox_vm_cloud_init_seed_url": f"{settings.seed_base_url}{context.seeds.token(instance)}/",
        "proxmox_vm_firewall_groups": list(instance.security_groups),
        "proxmox_vm_wait_for_address": True,
        "proxmox_vm_address_timeout": settings.address_timeout_s,
        "proxmox_vm_start_retries": settings.max_start_retry,
        **_registration(instance),
    }
    if settings.vm_storage and job.params["full_clone"]:
        variables["proxmox_vm_storage"] = settings.vm_storage
    return variables


def _registration(instance: Instance) -> dict[str, Any]:
    """The discovery role's variables for the VM (create.yml registers it with the address it comes up with)."""
    return {
        "discovery_host_name": instance.vm_name,
        "discovery_host_groups": [DISCOVERY_GROUP],
        "discovery_instance_id": str(instance.id),
    }


def _delete_variables(_context: Context, _job: Job, instance: Instance) -> dict[str, Any]:
    return {
        "proxmox_vm_destroy_vmid": instance.id,
        "proxmox_vm_destroy_name": instance.vm_name,
        "proxmox_vm_destroy_force": True,
        "discovery_host_name": instance.vm_name,
    }


def _firewall_variables(_context: Context, job: Job, instance: Instance) -> dict[str, Any]:
    return {
        "proxmox_vm_firewall_vmid": instance.id,
        "proxmox_vm_firewall_groups_add": job.params.get("add", []),
        "proxmox_vm_firewall_groups_remove": job.params.get("remove", []),
    }


def _power_up_variables(context: Context, _job: Job, instance: Instance) -> dict[str, Any]:
    return {
        "proxmox_vm_power_vmid": instance.id,
        "proxmox_vm_power_wait_for_address": True,
        "proxmox_vm_power_address_timeout": context.settings.address_timeout_s,
    }


def _start_variables(context: Context, job: Job, instance: Instance) -> dict[str, Any]:
    """A start, and the keys a key change made while the VM was stopped (start.yml applies them once it is up)."""
    variables = _power_up_variables(context, job, instance)
    if instance.ssh_keys_pending and context.settings.guest_access:
        variables |= _guest_keys(context, instance)
    return variables


def _keys_variables(context: Context, _job: Job, instance: Instance) -> dict[str, Any]:
    return _guest_keys(context, instance) | {"guest_ssh_keys_address": instance.address}


def _guest_keys(context: Context, instance: Instance) -> dict[str, Any]:
    """The guest_ssh_keys role's variables: the instance's keys, logged in with the provisioner's guest key."""
    return {
        "guest_ssh_keys_vmid": instance.id,
        "guest_ssh_keys_user": instance.login_user or context.settings.cloud_init_user,
        "guest_ssh_keys_present": list(instance.ssh_keys),
        "guest_ssh_keys_absent": list(instance.ssh_keys_removed),
        "guest_ssh_keys_private_key_file": str(context.settings.guest_key_path),
        "guest_ssh_keys_host_key": instance.host_key,
        "guest_ssh_keys_timeout": context.settings.address_timeout_s,
    }


def _power_down_variables(force: bool) -> Variables:
    return lambda _context, _job, instance: {"proxmox_vm_power_vmid": instance.id, "proxmox_vm_power_force": force}


def _created(job: Job, instance: Instance, outcome: HostOutcome) -> None:
    if outcome.ok or unregistered(outcome):
        # A VM that is up with its address is ACTIVE whatever the registry does; it is registered later.
        instance.lifecycle = Lifecycle.PROVISIONED
        instance.registration_pending = not outcome.ok
    elif instance.lifecycle == Lifecycle.BUILDING:
        instance.lifecycle = Lifecycle.ERROR
        instance.fault_message = "instance creation failed"
        instance.fault_details = outcome.error or job.error or "unknown error"
        instance.fault_at = utcnow()


def _deleted(job: Job, instance: Instance, outcome: HostOutcome) -> None:
    if outcome.ok:
        instance.lifecycle = Lifecycle.DELETED
        instance.deleted_at = utcnow()
        instance.address = None
    elif instance.lifecycle == Lifecycle.DELETING:  # the VM is still there: the reconciler deletes it again later
        instance.fault_message = DELETE_FAULT
        instance.fault_details = outcome.error or job.error or "unknown error"
        instance.fault_at = utcnow()


def _registered(_job: Job, instance: Instance, outcome: HostOutcome) -> None:
    if outcome.ok:
        instance.registration_pending = False


def unregistered(outcome: HostOutcome) -> bool:
    """The VM came up with its address, and only its registration in the discovery registry failed."""
    return ADDRESS in outcome.facts and outcome.failed_action == DISCOVERY_ACTION


def _register_variables(_context: Context, _job: Job, instance: Instance) -> dict[str, Any]:
    return _registration(instance) | {"discovery_host_address": instance.address or ""}


def _keys_changed(_job: Job, instance: Instance, outcome: HostOutcome) -> None:
    """A key change (or a start that carried one): applied in the guest, or waiting for the VM's next start."""
    applied = outcome.facts.get(KEYS_APPLIED)
    if outcome.ok and applied is not None:
        instance.ssh_keys_pending = str(applied).lower() != "true"


def _unchanged(_job: Job, _instance: Instance, _outcome: HostOutcome) -> None:
    """The power and firewall kinds change nothing but the address (taken for every kind)."""


KINDS: dict[JobKind, Kind] = {
    JobKind.CREATE: Kind("create.yml", _create_variables, _created),
    JobKind.DELETE: Kind("delete.yml", _delete_variables, _deleted, attempts=5),
    JobKind.START: Kind("start.yml", _start_variables, _keys_changed),
    JobKind.SHUTDOWN: Kind("stop.yml", _power_down_variables(force=False), _unchanged),
    JobKind.STOP: Kind("stop.yml", _power_down_variables(force=True), _unchanged),
    JobKind.REBOOT: Kind("reboot.yml", _power_up_variables, _unchanged, rerun_after_crash=False),
    JobKind.FIREWALL: Kind("firewall.yml", _firewall_variables, _unchanged),
    JobKind.REGISTER: Kind("register.yml", _register_variables, _registered),
    JobKind.KEYS: Kind("keys.yml", _keys_variables, _keys_changed, attempts=3),
}


def host_variables(context: Context, job: Job, instance: Instance) -> dict[str, Any]:
    """This job's VM as its playbook's roles take it: their own variables (docs/contract.md §2)."""
    return KINDS[JobKind(job.kind)].variables(context, job, instance)


def apply_outcome(job: Job, instance: Instance, outcome: HostOutcome) -> None:
    """What a finished job's result does to its instance: the address it reported, then its kind's effect."""
    address = outcome.facts.get(ADDRESS)
    if address:
        instance.address = address
    KINDS[JobKind(job.kind)].finish(job, instance, outcome)
