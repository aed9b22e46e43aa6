"""SSH keys of an operator VM under /v1/vms/{id}/ssh-keys: the seed's at once, the guest's by a keys job.

A running VM gets a key change over SSH (playbooks/keys.yml, logged in with the provisioner's guest key); a stopped
one at its next start. Site keys (configured for every VM, and the provisioner's own) are listed and never removed.
"""

from __future__ import annotations

import enum
from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.access import PREFIX
from api.operator import JobOut, OwnerDep, ProvisionerDep, job_out
from api.vms import PrincipalDep, normalised_key, operator_view, scope_of
from common.validators import Text
from engine.models import Instance, Job
from engine.service import Provisioner
from engine.sshkeys import fingerprint as fingerprint_of
from engine.sshkeys import key_material

router = APIRouter(prefix=PREFIX, tags=["vms"])

# OpenSSH's SHA256 fingerprint; its base64 may hold '/' (send it as is or as %2F) and '+'; base64url is taken too.
FINGERPRINT = r"^(SHA256:)?[A-Za-z0-9+/_-]{43}=?$"


class KeySync(enum.StrEnum):
    APPLIED = "applied"  # the guest has the VM's keys
    APPLYING = "applying"  # a keys job has not finished
    NEXT_START = "next_start"  # the VM was stopped at the last change: its next start applies them
    SEED_ONLY = "seed_only"  # the embedded simulator's emulated guests have no SSH: the keys are in the seed only


class KeyAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: Annotated[Text, Field(min_length=1, max_length=16 * 1024)]  # one OpenSSH public key line


class KeyOut(BaseModel):
    fingerprint: str
    type: str
    comment: str
    key: str
    site: bool  # a site key: every VM has it; it cannot be removed


class KeysOut(BaseModel):
    keys: list[KeyOut]
    sync: KeySync


class KeyChange(BaseModel):
    key: KeyOut | None  # the key added; null for a removal
    keys: list[KeyOut]  # the VM's keys now
    job: JobOut | None  # the keys job; null when nothing changed


@router.get("/vms/{vm_id}/ssh-keys", response_model=KeysOut)
def list_keys(vm_id: str, service: ProvisionerDep, scope: OwnerDep) -> KeysOut:
    """The VM's keys (its seed's, which the guest's user has once they are applied) and where the last change is."""
    instance = operator_view(service, vm_id, scope).instance
    instance, busy = service.ssh_keys(instance.id, scope)
    if service.settings.emulated_guests:
        sync = KeySync.SEED_ONLY
    else:
        sync = KeySync.APPLYING if busy else KeySync.NEXT_START if instance.ssh_keys_pending else KeySync.APPLIED
    return KeysOut(keys=_keys_out(service, instance), sync=sync)


@router.post("/vms/{vm_id}/ssh-keys", status_code=status.HTTP_202_ACCEPTED, response_model=KeyChange)
async def add_key(vm_id: str, body: KeyAdd, service: ProvisionerDep, principal: PrincipalDep) -> KeyChange:
    """Add a key: 202 with the keys job, or `job: null` when the VM has the key already."""
    key = normalised_key(body.key, "key")
    scope = scope_of(principal)
    vmid = (await run_in_threadpool(operator_view, service, vm_id, scope)).instance.id
    instance, job = await run_in_threadpool(service.add_ssh_key, vmid, scope, key)
    return _change(service, instance, key, job)


@router.delete(
    "/vms/{vm_id}/ssh-keys/{fingerprint:path}", status_code=status.HTTP_202_ACCEPTED, response_model=KeyChange
)
async def remove_key(
    vm_id: str,
    service: ProvisionerDep,
    principal: PrincipalDep,
    fingerprint: Annotated[str, Path(pattern=FINGERPRINT)],
) -> KeyChange:
    """Remove the key with this fingerprint (`ssh-keygen -lf`'s SHA256:…): from the seed at once, from the guest by
    the keys job. A site key is 409 site_key."""
    scope = scope_of(principal)
    vmid = (await run_in_threadpool(operator_view, service, vm_id, scope)).instance.id
    wanted = _canonical(fingerprint)
    instance, job = await run_in_threadpool(service.remove_ssh_key, vmid, scope, wanted)
    return _change(service, instance, None, job)


def _change(service: Provisioner, instance: Instance, key: str | None, job: Job | None) -> KeyChange:
    keys = _keys_out(service, instance)
    added = next((k for k in keys if key is not None and k.fingerprint == fingerprint_of(key)), None)
    return KeyChange(key=added, keys=keys, job=job_out(job) if job is not None else None)


def _keys_out(service: Provisioner, instance: Instance) -> list[KeyOut]:
    site = {key_material(k) for k in service.site_keys}
    return [_key_out(key, key_material(key) in site) for key in instance.ssh_keys]


def _key_out(key: str, site: bool) -> KeyOut:
    parts = key.split(" ", 2)
    return KeyOut(
        fingerprint=fingerprint_of(key), type=parts[0], comment=parts[2] if len(parts) > 2 else "", key=key, site=site
    )


def _canonical(given: str) -> str:
    """SHA256:<standard base64, no padding>, from any of the forms FINGERPRINT takes."""
    body = given.removeprefix("SHA256:").rstrip("=").replace("-", "+").replace("_", "/")
    return "SHA256:" + body
