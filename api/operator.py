"""Operator routes under /v1 (Bearer token): jobs and events, workers, flavours; plus /healthz, /readyz, /metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from api.access import PREFIX, OperatorGuard, principal_of
from common.validators import UtcDateTime
from engine.errors import NotFound, ProvisionerError
from engine.flavours import FlavourSpec
from engine.models import Job, JobState
from engine.naming import MAX_VMID
from engine.service import Provisioner
from engine.tokens import Principal


async def provisioner(request: Request) -> Provisioner:
    # Coroutines, these dependencies: FastAPI would hand a plain function to its thread pool, once per request.
    return request.app.state.provisioner  # type: ignore[no-any-return]


class Forbidden(ProvisionerError):
    status = 403
    code = "forbidden"


async def admin(principal: Annotated[Principal, Depends(principal_of)]) -> Principal:
    if not principal.is_admin:
        raise Forbidden(f"token {principal.name!r} ({principal.role}) may not do this: it takes an admin token")
    return principal


async def owner_scope(principal: Annotated[Principal, Depends(principal_of)]) -> str | None:
    """Whose VMs (and their jobs) the caller sees and manages: an operator its own; an admin, and a viewer (reading
    only), everyone's (None)."""
    return principal.name if principal.role == "operator" else None


ProvisionerDep = Annotated[Provisioner, Depends(provisioner)]
OwnerDep = Annotated[str | None, Depends(owner_scope)]
router = APIRouter(prefix=PREFIX, tags=["operator"])
admin_router = APIRouter(prefix=PREFIX, tags=["operator"], dependencies=[Depends(admin)])
health = APIRouter(tags=["health"])


def install(app: FastAPI, token: str | None) -> None:
    """Add the /v1 routes behind their guard; `token` None disables authentication (explicit insecure development
    mode: every caller is the built-in admin)."""
    app.add_middleware(OperatorGuard, token=token)
    app.include_router(router)
    app.include_router(admin_router)


class JobOut(BaseModel):
    id: str
    kind: str
    instance_id: int
    state: str
    params: dict[str, Any]
    attempts: int
    cancel_requested: bool
    result: dict[str, Any]
    error: str | None
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    worker_id: str | None = None  # the worker that claimed it last
    run_id: str | None = None  # its playbook run (artifacts in <state dir>/runs/<run_id>/), while it has one


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    slots: int  # playbook runs at once (PROVISIONER_MAX_PARALLEL_RUNS)
    started_at: UtcDateTime
    heartbeat_at: UtcDateTime
    draining: bool
    running_jobs: int


class EventOut(BaseModel):
    counter: int
    event: str
    task: str | None
    changed: bool
    stdout: str
    data: dict[str, Any]
    created_at: UtcDateTime


class FlavourOut(FlavourSpec):
    pass


def job_out(job: Job) -> JobOut:
    return JobOut.model_validate(job, from_attributes=True)


@router.get("/jobs", response_model=list[JobOut])
def list_jobs(
    service: ProvisionerDep,
    owner: OwnerDep,
    state: JobState | None = None,
    instance_id: Annotated[int | None, Query(ge=0, le=MAX_VMID)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobOut]:
    """Jobs, newest first (an operator token's: of its own VMs)."""
    return [job_out(job) for job in service.jobs(state, instance_id, limit, owner)]


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, service: ProvisionerDep, owner: OwnerDep) -> JobOut:
    """One job."""
    return job_out(service.job(job_id, owner))


@router.get("/jobs/{job_id}/events", response_model=list[EventOut])
def get_job_events(
    job_id: str,
    service: ProvisionerDep,
    owner: OwnerDep,
    after: Annotated[int, Query(ge=-1, le=2**62)] = -1,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[EventOut]:
    """The job's Ansible events in order (`after`: the last counter already seen)."""
    rows = service.job_events(job_id, after, limit, owner)
    return [EventOut.model_validate(row, from_attributes=True) for row in rows]


@router.post("/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def cancel_job(job_id: str, service: ProvisionerDep, owner: OwnerDep) -> JobOut:
    """Cancel: a pending job at once; a running one with its playbook run (once every job in the run asked)."""
    job = service.cancel(job_id, owner)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job_out(job)


@router.get("/workers", response_model=list[WorkerOut])
def list_workers(service: ProvisionerDep) -> list[WorkerOut]:
    """The worker processes that run the jobs, with their last heartbeat and how many jobs each runs."""
    return [WorkerOut.model_validate(worker, from_attributes=True) for worker in service.workers()]


@router.get("/flavours", response_model=list[FlavourOut])
def get_flavours(service: ProvisionerDep) -> list[FlavourOut]:
    """The flavour catalogue."""
    return [FlavourOut.model_validate(row, from_attributes=True) for row in service.flavours()]


@admin_router.put("/flavours/{flavour_id}", response_model=FlavourOut)
def put_flavour(flavour_id: str, body: FlavourSpec, service: ProvisionerDep) -> FlavourOut:
    """Create or replace a flavour (the id in the body must match the path)."""
    if body.id != flavour_id:
        raise ProvisionerError("the flavour id in the body differs from the path")
    return FlavourOut.model_validate(service.put_flavour(body), from_attributes=True)


@admin_router.delete("/flavours/{flavour_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_flavour(flavour_id: str, service: ProvisionerDep) -> Response:
    """Remove a flavour (existing instances keep their size)."""
    service.delete_flavour(flavour_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class AuditOut(BaseModel):
    id: int
    at: UtcDateTime
    actor: str
    action: str
    target: str | None
    params: dict[str, Any]
    status: int
    client: str | None


class AuditPage(BaseModel):
    entries: list[AuditOut]
    next_before: int | None  # pass as `before` for the next (older) page; null on the last


@admin_router.get("/audit", response_model=AuditPage)
def get_audit(
    service: ProvisionerDep,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target: Annotated[str | None, Query(max_length=128)] = None,
    since: UtcDateTime | None = None,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """The audit log, newest first (admin): who did what to what, the parameters (secrets removed), the answer."""
    rows = service.audit_entries(
        actor=actor, action=action, target=target, since=since, before_id=before, limit=limit + 1
    )
    entries = [AuditOut.model_validate(row, from_attributes=True) for row in rows[:limit]]
    return AuditPage(entries=entries, next_before=entries[-1].id if len(rows) > limit else None)


@health.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@health.get("/readyz")
def readyz(service: ProvisionerDep, response: Response) -> dict[str, str]:
    """Readiness: the database answers, the cluster view is fresh and a worker takes jobs."""
    service.check_database()
    if service.cluster.snapshot() is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "degraded", "proxmox": "unreachable or stale"}
    if not service.workers_alive():
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "degraded", "workers": "none alive: jobs wait"}
    return {"status": "ready"}


@health.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
