"""Operator routes under /v1 (Bearer token): jobs and events, flavours; plus /healthz, /readyz, /metrics."""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from engine.errors import NotFound, ProvisionerError
from engine.flavours import FlavourSpec
from engine.models import Job, JobState
from engine.service import Provisioner


class Unauthorized(ProvisionerError):
    status = 401
    code = "unauthorized"


def provisioner(request: Request) -> Provisioner:
    return request.app.state.provisioner  # type: ignore[no-any-return]


def operator(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_auth_token: Annotated[str | None, Header()] = None,
) -> None:
    """Operator routes take `Authorization: Bearer <token>` (or `X-Auth-Token`)."""
    token: str | None = request.app.state.operator_token
    if token is None:
        return
    given = (authorization.removeprefix("Bearer ") if authorization else x_auth_token or "").encode()
    if not hmac.compare_digest(given, token.encode()):
        raise Unauthorized("missing or invalid operator token (Authorization: Bearer …)")


ProvisionerDep = Annotated[Provisioner, Depends(provisioner)]
router = APIRouter(prefix="/v1", tags=["operator"], dependencies=[Depends(operator)])
health = APIRouter(tags=["health"])


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
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventOut(BaseModel):
    counter: int
    event: str
    task: str | None
    changed: bool
    stdout: str
    data: dict[str, Any]
    created_at: datetime


class FlavourOut(FlavourSpec):
    pass


def job_out(job: Job) -> JobOut:
    return JobOut.model_validate(job, from_attributes=True)


@router.get("/jobs", response_model=list[JobOut])
def list_jobs(
    service: ProvisionerDep,
    state: JobState | None = None,
    instance_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobOut]:
    """Jobs, newest first."""
    return [job_out(job) for job in service.jobs(state, instance_id, limit)]


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, service: ProvisionerDep) -> JobOut:
    """One job."""
    return job_out(service.job(job_id))


@router.get("/jobs/{job_id}/events", response_model=list[EventOut])
def get_job_events(
    job_id: str, service: ProvisionerDep, after: int = -1, limit: Annotated[int, Query(ge=1, le=5000)] = 1000
) -> list[EventOut]:
    """The job's Ansible events in order (`after`: the last counter already seen)."""
    return [EventOut.model_validate(row, from_attributes=True) for row in service.job_events(job_id, after, limit)]


@router.post("/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def cancel_job(job_id: str, service: ProvisionerDep) -> JobOut:
    """Cancel: a pending job at once; a running one with its playbook run (once every job in the run asked)."""
    job = service.cancel(job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist")
    return job_out(job)


@router.get("/flavours", response_model=list[FlavourOut])
def get_flavours(service: ProvisionerDep) -> list[FlavourOut]:
    """The flavour catalogue."""
    return [FlavourOut.model_validate(row, from_attributes=True) for row in service.flavours()]


@router.put("/flavours/{flavour_id}", response_model=FlavourOut)
def put_flavour(flavour_id: str, body: FlavourSpec, service: ProvisionerDep) -> FlavourOut:
    """Create or replace a flavour (the id in the body must match the path)."""
    if body.id != flavour_id:
        raise ProvisionerError("the flavour id in the body differs from the path")
    return FlavourOut.model_validate(service.put_flavour(body), from_attributes=True)


@router.delete("/flavours/{flavour_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_flavour(flavour_id: str, service: ProvisionerDep) -> Response:
    """Remove a flavour (existing instances keep their size)."""
    service.delete_flavour(flavour_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@health.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@health.get("/readyz")
def readyz(service: ProvisionerDep, response: Response) -> dict[str, str]:
    """Readiness: the database answers and the cluster view is fresh."""
    service.check_database()
    if service.cluster.snapshot() is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "degraded", "proxmox": "unreachable or stale"}
    return {"status": "ready"}


@health.get("/metrics", include_in_schema=False)
def prometheus_metrics() -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
