"""Operator VMs under /v1: sizes, images, and VMs an API token makes, sees and manages (its own; an admin's: all).

Every change is an Ansible job, as for VISA; the VMs are ordinary instances with an owner (the token's name), so VISA
never sees them and they show up in the jobs, the audit log and the metrics.
"""

from __future__ import annotations

import enum
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.concurrency import run_in_threadpool

from api.access import PREFIX, principal_of
from api.operator import JobOut, OwnerDep, ProvisionerDep, job_out
from common.described import Described, described_on
from common.validators import Text, UtcDateTime
from engine.errors import InvalidSSHKeyError, NotFound, UnknownFlavour
from engine.intake import CUSTOM_FLAVOUR, CreateRequest, Resources
from engine.models import VISA_OWNER, Instance, Job, JobKind
from engine.phases import Phase, phase
from engine.service import InstanceView, Listing, Provisioner
from engine.sshkeys import InvalidSSHKey, normalise_key
from engine.tokens import Principal

router = APIRouter(prefix=PREFIX, tags=["vms"])

# Golem's sizes: vCPUs, MB of memory, GB of disk.
SIZES: dict[str, tuple[int, int, int]] = {
    "small": (1, 1024, 10),
    "medium": (2, 4096, 20),
    "large": (4, 8192, 40),
    "xlarge": (8, 16384, 80),
}
MAX_LEASE_S = 366 * 24 * 3600
MAX_USER_DATA = 256 * 1024  # as VISA's bootCommand


class VmState(enum.StrEnum):
    BUILDING = "building"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    DELETING = "deleting"
    ERROR = "error"
    UNKNOWN = "unknown"


STATES = {
    Phase.BUILDING: VmState.BUILDING,
    Phase.FAILED: VmState.ERROR,
    Phase.DELETE_STUCK: VmState.ERROR,
    Phase.DELETING: VmState.DELETING,
    Phase.STARTING: VmState.STARTING,
    Phase.STOPPING: VmState.STOPPING,
    Phase.REBOOTING: VmState.REBOOTING,
    Phase.UNKNOWN: VmState.UNKNOWN,
    Phase.MIGRATING_RUNNING: VmState.RUNNING,  # a live migration: it runs all along
    Phase.MIGRATING_STOPPED: VmState.STOPPED,
    Phase.SEED_OVERDUE: VmState.ERROR,
    Phase.RUNNING: VmState.RUNNING,
    Phase.BOOTING: VmState.STARTING,
    Phase.STOPPED: VmState.STOPPED,
    Phase.PAUSED: VmState.STOPPED,
    Phase.OTHER: VmState.UNKNOWN,
}

PrincipalDep = Annotated[Principal, Depends(principal_of)]

# What vm_out shows besides the state's columns (a list reads only these).
VM_COLUMNS = frozenset(
    {"name", "image_id", "flavour_id", "cores", "memory_mb", "disk_gb", "login_user", "expires_at", "fault_message"}
)


class Lease(BaseModel):
    """An end for a VM's lease: `lease` seconds from now, or `expires_at` (RFC 3339), not both; neither: no end."""

    model_config = ConfigDict(extra="forbid")

    lease: Annotated[int, Field(ge=60, le=MAX_LEASE_S)] | None = None  # seconds from now
    expires_at: datetime | None = None

    @model_validator(mode="after")
    def _not_both(self) -> Lease:
        if self.lease is not None and self.expires_at is not None:
            raise ValueError("give lease (seconds) or expires_at, not both")
        return self

    @field_validator("expires_at")
    @classmethod
    def _future(cls, value: datetime | None) -> datetime | None:
        return _future_end(value)

    def ends_at(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(seconds=self.lease) if self.lease is not None else self.expires_at


class VmCreate(Lease):
    """POST /v1/vms: a size as `flavour`, `size`, or raw `cpus`/`memory_mb`/`disk_gb` (one of the three)."""

    name: Annotated[Text, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    image: Annotated[Text, Field(min_length=1, max_length=255)]
    flavour: Annotated[Text, Field(min_length=1, max_length=64)] | None = None
    size: Literal["small", "medium", "large", "xlarge"] | None = None
    cpus: Annotated[int, Field(ge=1, le=256)] | None = None
    memory_mb: Annotated[int, Field(ge=256, le=4 * 1024 * 1024)] | None = None
    disk_gb: Annotated[int, Field(ge=1, le=64 * 1024)] | None = None
    ssh_keys: Annotated[list[Annotated[Text, Field(max_length=16 * 1024)]], Field(min_length=1, max_length=32)]
    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] | None = None
    metadata: Annotated[
        dict[Annotated[Text, Field(max_length=255)], Annotated[Text, Field(max_length=4096)]], Field(max_length=64)
    ] = {}
    # The guest's user-data as cloud-init takes it: a #cloud-config document, a #! script (run once, as root), a MIME
    # multipart. The site's user and keys come in vendor-data: a #cloud-config here merges over them.
    user_data: Annotated[Text, Field(min_length=1, max_length=MAX_USER_DATA)] | None = None

    @model_validator(mode="after")
    def _one_size(self) -> VmCreate:
        raw = [self.cpus, self.memory_mb, self.disk_gb]
        given = [self.flavour is not None, self.size is not None, any(v is not None for v in raw)]
        if sum(given) != 1:
            raise ValueError("give exactly one of flavour, size, or cpus/memory_mb/disk_gb")
        if given[2] and any(v is None for v in raw):
            raise ValueError("raw resources need all of cpus, memory_mb and disk_gb")
        return self


class LeaseChange(Lease):
    """PATCH /v1/vms/{id}: a new end for the lease; `null` both: no end."""


class SizeOut(BaseModel):
    name: str
    cpus: int
    memory_mb: int
    disk_gb: int


class ImageOut(BaseModel):
    id: str
    name: str
    node: str
    disk_gb: int


class ResourcesOut(BaseModel):
    cpus: int
    memory_mb: int
    disk_gb: int


class SshOut(BaseModel):
    host: str
    port: int
    user: str
    command: str
    # The guest's host key as it phoned it home, for known_hosts: in the GET of one VM, once it has (lists: null).
    host_key: str | None


class VmOut(BaseModel):
    id: str
    name: str
    owner: str
    state: VmState
    error: str | None  # why it is in `error`
    image: str
    flavour: str
    resources: ResourcesOut
    address: str | None
    ssh: SshOut | None  # once it has an address
    expires_at: UtcDateTime | None  # its lease; null: none
    created_at: UtcDateTime
    jobs: list[JobOut] | None = None  # its jobs, newest first (GET of one VM)


class VmAccepted(BaseModel):
    vm: VmOut
    job: JobOut  # its create job


class VmPage(BaseModel):
    vms: list[VmOut]
    next_after: str | None  # pass as `after` for the next page; null on the last


class JobAccepted(BaseModel):
    job: JobOut


# ---------------------------------------------------------------------------------------------------------- routes


@router.get("/sizes", response_model=list[SizeOut])
def list_sizes() -> list[SizeOut]:
    """The sizes a VM may be asked in (as the Golem provider's)."""
    return [SizeOut(name=n, cpus=c, memory_mb=m, disk_gb=d) for n, (c, m, d) in SIZES.items()]


@router.get("/images", response_model=list[ImageOut])
def list_images(service: ProvisionerDep) -> list[ImageOut]:
    """The templates a VM may be made from; `image` takes the id or the name."""
    return [
        ImageOut(id=str(t.vmid), name=t.name, node=t.node, disk_gb=-(-t.maxdisk // 1024**3)) for t in service.images()
    ]


@router.post("/vms", status_code=status.HTTP_202_ACCEPTED, response_model=VmAccepted)
async def create_vm(
    body: VmCreate,
    request: Request,
    service: ProvisionerDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> VmAccepted:
    """Make a VM owned by the caller's token; 202 with the VM and its create job. The same Idempotency-Key with the
    same body answers the same VM again; with another body, 409 idempotency_conflict."""
    flavour_id = await run_in_threadpool(_flavour_id, body, service) if body.flavour else _flavour_id(body, service)
    create = CreateRequest(
        name=body.name,
        image_id=body.image,
        flavour_id=flavour_id,
        security_groups=[],
        metadata=dict(body.metadata),
        boot_command=body.user_data,
        owner=principal.name,
        resources=_resources(body),
        ssh_keys=tuple(normalised_keys(body.ssh_keys)),
        login_user=body.user,
        expires_at=body.ends_at(),
        quotas=principal.quotas,
        idempotency=(idempotency_key, _digest(await request.body())) if idempotency_key else None,
    )
    created = await service.create_vm(create)
    # Described from the rows the intake stored: no read, so a burst of creates waits on nothing but its commits.
    instance, job = Instance(**created.instance), Job(**created.job)
    view = InstanceView(instance, JobKind.CREATE, None, None, snapshot_ok=True)
    return VmAccepted(vm=vm_out(view, service), job=job_out(job))


@router.get("/vms", response_model=VmPage)
def list_vms(
    request: Request,
    service: ProvisionerDep,
    scope: OwnerDep,
    state: VmState | None = None,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    name_prefix: Annotated[str | None, Query(max_length=63)] = None,
    after: Annotated[str | None, Query(max_length=12, pattern=r"^[0-9]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> VmPage:
    """VMs, by id (an operator token's: its own; `owner` filters for the others), not VISA's. `after`: the
    `next_after` of the previous page."""
    if scope is not None and owner not in (None, scope):
        return VmPage(vms=[], next_after=None)
    listing = Listing(
        VM_COLUMNS,
        owner=scope or owner,
        not_owner=VISA_OWNER,
        after=int(after) if after is not None else None,
        name_prefix=name_prefix,
        limit=limit + 1 if state is None else None,  # a state is known once each VM is described
    )
    described = described_on(request.app.state, "listed_vms")
    vms = [_listed_vm_out(v, service, described) for v in service.views(listing)]
    if state is not None:
        vms = [vm for vm in vms if vm.state == state]
    page = vms[:limit]
    return VmPage(vms=page, next_after=page[-1].id if len(vms) > limit else None)


@router.get("/vms/{vm_id}", response_model=VmOut)
def get_vm(vm_id: str, service: ProvisionerDep, scope: OwnerDep) -> VmOut:
    """One VM, with its jobs."""
    view = operator_view(service, vm_id, scope)
    vm = vm_out(view, service)
    vm.jobs = [job_out(job) for job in service.jobs(None, view.instance.id, 100, scope)]
    return vm


@router.post("/vms/{vm_id}/start", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def start_vm(vm_id: str, service: ProvisionerDep, principal: PrincipalDep) -> JobAccepted:
    return _power(service, principal, vm_id, JobKind.START)


@router.post("/vms/{vm_id}/stop", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def stop_vm(vm_id: str, service: ProvisionerDep, principal: PrincipalDep, force: bool = False) -> JobAccepted:
    """A clean shutdown (ACPI); `force=true`: power off at once."""
    return _power(service, principal, vm_id, JobKind.STOP if force else JobKind.SHUTDOWN)


@router.post("/vms/{vm_id}/reboot", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def reboot_vm(vm_id: str, service: ProvisionerDep, principal: PrincipalDep) -> JobAccepted:
    return _power(service, principal, vm_id, JobKind.REBOOT)


@router.delete("/vms/{vm_id}", status_code=status.HTTP_202_ACCEPTED, response_model=JobAccepted)
def delete_vm(vm_id: str, service: ProvisionerDep, principal: PrincipalDep) -> JobAccepted:
    """Delete the VM (its delete job); asking again while it is queued answers that job."""
    operator_view(service, vm_id, scope_of(principal))
    return JobAccepted(job=job_out(service.delete(vm_id, scope_of(principal))))


@router.patch("/vms/{vm_id}", response_model=VmOut)
def change_lease(vm_id: str, body: LeaseChange, service: ProvisionerDep, principal: PrincipalDep) -> VmOut:
    """Extend, shorten or end the lease: the VM is deleted at its end, also after a restart."""
    view = operator_view(service, vm_id, scope_of(principal))
    service.set_lease(view.instance.id, scope_of(principal), body.ends_at())
    return vm_out(operator_view(service, vm_id, scope_of(principal)), service)


# --------------------------------------------------------------------------------------------------------- helpers


def vm_out(view: InstanceView, service: Provisioner, state: VmState | None = None) -> VmOut:
    instance = view.instance
    state = state or vm_state(view)
    user = instance.login_user or service.settings.cloud_init_user
    address = instance.address
    ssh = None
    if address:
        ssh = SshOut(host=address, port=22, user=user, command=f"ssh {user}@{address}", host_key=_host_key(instance))
    return VmOut(
        id=str(instance.id),
        name=instance.name,
        owner=instance.owner,
        state=state,
        error=(instance.fault_message or "error") if state is VmState.ERROR else None,
        image=instance.image_id,
        flavour=instance.flavour_id,
        resources=ResourcesOut(cpus=instance.cores, memory_mb=instance.memory_mb, disk_gb=instance.disk_gb),
        address=address,
        ssh=ssh,
        expires_at=instance.expires_at,
        created_at=instance.created_at,
    )


def _listed_vm_out(view: InstanceView, service: Provisioner, described: Described[VmOut]) -> VmOut:
    state = vm_state(view)
    key = (view.instance.id, view.instance.updated_at, state, service.settings.cloud_init_user)
    return described.get(key, lambda: vm_out(view, service, state))


def _host_key(instance: Instance) -> str | None:
    """Its host key (type and key) when the instance carries it: a list's rows do not (VM_COLUMNS)."""
    host_key = getattr(instance, "host_key", None)
    return " ".join(host_key.split()[:2]) if host_key else None


def vm_state(view: InstanceView) -> VmState:
    return STATES[phase(view)]


def operator_view(service: Provisioner, vm_id: str, scope: str | None) -> InstanceView:
    """An operator VM (never VISA's), of `scope` when given."""
    view = service.view(vm_id, scope)
    if view.instance.owner == VISA_OWNER:
        raise NotFound(f"instance {vm_id!r} does not exist")
    return view


def scope_of(principal: Principal) -> str | None:
    return None if principal.is_admin else principal.name


def _power(service: Provisioner, principal: Principal, vm_id: str, kind: JobKind) -> JobAccepted:
    operator_view(service, vm_id, scope_of(principal))
    return JobAccepted(job=job_out(service.power(vm_id, kind, scope_of(principal))))


def _flavour_id(body: VmCreate, service: Provisioner) -> str:
    if body.flavour is None:
        return f"size:{body.size}" if body.size else CUSTOM_FLAVOUR
    known = sorted(f.id for f in service.flavours())
    if body.flavour not in known:
        raise UnknownFlavour(f"flavour {body.flavour!r} does not exist; the flavours are: {', '.join(known)}")
    return body.flavour


def _resources(body: VmCreate) -> Resources | None:
    if body.size is not None:
        return Resources(*SIZES[body.size])
    if body.cpus is not None and body.memory_mb is not None and body.disk_gb is not None:
        return Resources(body.cpus, body.memory_mb, body.disk_gb)
    return None


def normalised_keys(keys: list[str]) -> list[str]:
    """The keys validated and normalised; an error names the key (`ssh_keys[1]: …`) and why."""
    return [normalised_key(key, f"ssh_keys[{index}]") for index, key in enumerate(keys)]


def normalised_key(key: str, where: str) -> str:
    try:
        return normalise_key(key)
    except InvalidSSHKey as exc:
        raise InvalidSSHKeyError(f"{where}: {exc}") from exc


def _future_end(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("expires_at needs a time zone (RFC 3339)")
    if value <= datetime.now(UTC) + timedelta(seconds=30):
        raise ValueError("expires_at must be in the future")
    return value


def _digest(body: bytes) -> str:
    """The request body's digest, as JSON read back (key order and spacing do not matter)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()
