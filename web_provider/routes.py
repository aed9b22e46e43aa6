"""The VISA web-provider routes (every path under /api/, X-Auth-Token checked by web_provider.http)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from common.described import Described, described_on
from engine.intake import CreateRequest
from engine.jobs.kinds import DELETE_FAULT
from engine.models import VISA_OWNER, Flavour, JobKind
from engine.proxmox import VmInfo
from engine.service import InstanceView, Listing, Provisioner
from web_provider.schemas import (
    CreatedOut,
    FaultOut,
    FlavourOut,
    IdentifierOut,
    ImageOut,
    InstanceCreate,
    InstanceOut,
    MessageOut,
    MetricsOut,
    SecurityGroupBody,
    iso,
)
from web_provider.states import VisaState, visa_state

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["visa"])


async def provisioner(request: Request) -> Provisioner:
    # A coroutine, so that FastAPI does not hand this dependency to its thread pool.
    return request.app.state.provisioner  # type: ignore[no-any-return]


ProvisionerDep = Annotated[Provisioner, Depends(provisioner)]


# The fault of an instance that runs but whose guest did not finish cloud-init within PROVISIONER_READY_TIMEOUT.
SEED_OVERDUE = "the guest did not finish cloud-init"


def image_out(vm: VmInfo) -> ImageOut:
    return ImageOut(id=str(vm.vmid), name=vm.name, size=vm.maxdisk)


def flavour_out(row: Flavour) -> FlavourOut:
    return FlavourOut(id=row.id, name=row.name, cpus=row.cpus, ram=row.ram_mb, disk=row.disk_gb)


def instance_out(view: InstanceView) -> InstanceOut:
    instance = view.instance
    state = visa_state(view)
    fault = None
    if state is VisaState.ERROR and view.seed_overdue:
        fault = FaultOut(
            message=SEED_OVERDUE,
            code=500,
            details=(
                f"the guest at {instance.address} is running but never phoned home: cloud-init could not fetch its "
                "NoCloud seed (is the seed URL reachable from the guest network?) or failed before its final stage"
            ),
            created=iso(instance.created_at),
        )
    elif state is VisaState.ERROR and view.delete_overdue:
        fault = FaultOut(
            message=DELETE_FAULT,
            code=500,
            details=(instance.fault_message == DELETE_FAULT and instance.fault_details)
            or "the delete has not finished",
            created=iso(instance.delete_requested_at or instance.updated_at),
        )
    elif state is VisaState.ERROR:
        fault = FaultOut(
            message=instance.fault_message or "error",
            code=500,
            details=instance.fault_details or "",
            created=iso(instance.fault_at or instance.updated_at),
        )
    return InstanceOut(
        id=str(instance.id),
        name=instance.name,
        state=state,
        address=instance.address,
        imageId=instance.image_id,
        flavourId=instance.flavour_id,
        createdAt=iso(instance.created_at),
        securityGroups=list(instance.security_groups),
        fault=fault,
    )


# --- catalogue


@router.get("/images", response_model=list[ImageOut])
def list_images(service: ProvisionerDep) -> list[ImageOut]:
    """Proxmox templates, with their boot disk size in bytes."""
    return [image_out(vm) for vm in service.images()]


@router.get("/images/{image_id}", response_model=ImageOut)
def get_image(image_id: str, service: ProvisionerDep) -> ImageOut:
    """One template."""
    return image_out(service.image(image_id))


@router.get("/flavours", response_model=list[FlavourOut])
def list_flavours(service: ProvisionerDep) -> list[FlavourOut]:
    """Flavours: cpus (vCPUs), ram (MB), disk (GB)."""
    return [flavour_out(row) for row in service.flavours()]


@router.get("/flavours/{flavour_id}", response_model=FlavourOut)
def get_flavour(flavour_id: str, service: ProvisionerDep) -> FlavourOut:
    """One flavour, in the same units as the list."""
    return flavour_out(service.flavour(flavour_id))


@router.get("/security_groups", response_model=list[str])
def list_security_groups(service: ProvisionerDep) -> list[str]:
    """The cluster's firewall security group names."""
    return service.security_groups()


@router.get("/metrics", response_model=MetricsOut)
def get_metrics(service: ProvisionerDep) -> MetricsOut:
    """Cloud limits: committed vCPUs and RAM (MB), the instance quota and its use."""
    return MetricsOut(**service.metrics())


# --- instances

# What instance_out shows besides the state's columns (a list reads only these).
INSTANCE_COLUMNS = frozenset(
    {"name", "image_id", "flavour_id", "security_groups", "fault_message", "fault_details", "fault_at"}
)


@router.get("/instances", response_model=list[InstanceOut])
def list_instances(request: Request, service: ProvisionerDep) -> list[InstanceOut]:
    """Every instance this provider manages."""
    described = described_on(request.app.state, "listed_instances")
    return [_listed(view, described) for view in service.views(Listing(INSTANCE_COLUMNS, owner=VISA_OWNER))]


def _listed(view: InstanceView, described: Described[InstanceOut]) -> InstanceOut:
    state = visa_state(view)  # the fault it shows depends on why it is ERROR: the overdue flags are in the key too
    key = (view.instance.id, view.instance.updated_at, state, view.seed_overdue, view.delete_overdue)
    return described.get(key, lambda: instance_out(view))


@router.get("/instances/identifiers", response_model=list[IdentifierOut])
def list_identifiers(service: ProvisionerDep) -> list[IdentifierOut]:
    """A bare array of {id, name} for the instances this provider manages (VISA's zombie cleanup)."""
    listing = Listing(frozenset({"name"}), owner=VISA_OWNER)
    return [IdentifierOut(id=str(v.instance.id), name=v.instance.name) for v in service.views(listing)]


@router.post("/instances", status_code=status.HTTP_201_CREATED, response_model=CreatedOut)
async def create_instance(body: InstanceCreate, service: ProvisionerDep) -> CreatedOut:
    """Validate, reserve a VMID, persist and enqueue the create job; answers at once (state BUILDING)."""
    vmid = await service.create(
        CreateRequest(
            name=body.name,
            image_id=body.imageId,
            flavour_id=body.flavourId,
            security_groups=list(body.securityGroups or []),
            metadata=dict(body.metadata or {}),
            boot_command=body.bootCommand,
        )
    )
    return CreatedOut(id=str(vmid))


@router.get("/instances/{instance_id}", response_model=InstanceOut)
def get_instance(instance_id: str, service: ProvisionerDep) -> InstanceOut:
    """One instance; 404 only when it truly does not exist."""
    return instance_out(service.view(instance_id, VISA_OWNER))


@router.delete("/instances/{instance_id}", response_model=MessageOut)
def delete_instance(instance_id: str, service: ProvisionerDep) -> MessageOut:
    """Delete the VM whatever its power state (stopped first if needed); the job finishes it."""
    service.delete(instance_id, VISA_OWNER)
    return MessageOut(message="instance deletion accepted")


def _power(kind: JobKind, verb: str):  # type: ignore[no-untyped-def]
    def action(instance_id: str, service: ProvisionerDep) -> MessageOut:
        service.power(instance_id, kind, VISA_OWNER)
        return MessageOut(message=f"instance {verb} accepted")

    action.__doc__ = f"{verb.capitalize()} the instance (no body); the state shows the transition."
    return action


router.add_api_route(
    "/instances/{instance_id}/start",
    _power(JobKind.START, "start"),
    methods=["POST"],
    response_model=MessageOut,
    name="start_instance",
)
router.add_api_route(
    "/instances/{instance_id}/shutdown",
    _power(JobKind.SHUTDOWN, "shutdown"),
    methods=["POST"],
    response_model=MessageOut,
    name="shutdown_instance",
)
router.add_api_route(
    "/instances/{instance_id}/reboot",
    _power(JobKind.REBOOT, "reboot"),
    methods=["POST"],
    response_model=MessageOut,
    name="reboot_instance",
)


@router.get("/instances/{instance_id}/security_groups", response_model=list[str])
def get_instance_security_groups(instance_id: str, service: ProvisionerDep) -> list[str]:
    """The security groups of one instance."""
    return service.instance_security_groups(instance_id, VISA_OWNER)


@router.post("/instances/{instance_id}/security_groups", response_model=MessageOut)
def add_instance_security_group(instance_id: str, body: SecurityGroupBody, service: ProvisionerDep) -> MessageOut:
    """Add a security group ({"name": ...})."""
    service.add_security_group(instance_id, body.name, VISA_OWNER)
    return MessageOut(message=f"security group {body.name} added")


@router.post("/instances/{instance_id}/security_groups/remove", response_model=MessageOut)
def remove_instance_security_group(instance_id: str, body: SecurityGroupBody, service: ProvisionerDep) -> MessageOut:
    """Remove a security group ({"name": ...}); a POST, as VISA sends it."""
    service.remove_security_group(instance_id, body.name, VISA_OWNER)
    return MessageOut(message=f"security group {body.name} removed")


def unknown_instance_fallback(instance_id: str) -> InstanceOut:
    """What GET /api/instances/{id} answers when our own store fails: never a 5xx, which VISA reads as deleted."""
    return InstanceOut(
        id=instance_id,
        name="",
        state=VisaState.UNKNOWN,
        address=None,
        imageId="",
        flavourId="",
        createdAt="",
        securityGroups=[],
        fault=None,
    )
