"""An operator VM's logs under /v1/vms/{id}/logs: its jobs' Ansible events and its guest's cloud-init output."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.access import PREFIX
from api.operator import OwnerDep, ProvisionerDep
from api.vms import operator_view
from common.validators import UtcDateTime
from engine.guestlogs import OutputRead, read_output
from engine.service import InstanceView, Provisioner

router = APIRouter(prefix=PREFIX, tags=["vms"])

FOLLOW_POLL_S = 0.5  # how often a followed log looks for new lines
KEEPALIVE_S = 15.0  # a comment line this often on a quiet stream, so proxies keep it open
CLOUD_INIT_POLL_S = 5.0  # how often a followed log reads the guest's cloud-init output


class LogLine(BaseModel):
    id: int  # pass as `after` (or Last-Event-ID) to read on
    at: UtcDateTime
    job_id: str
    kind: str
    event: str
    task: str | None
    stdout: str


class CloudInitOut(BaseModel):
    """The guest's /var/log/cloud-init-output.log (its tail), read over SSH; `error` says why it could not be."""

    output: str
    truncated: bool  # only the last 256 KiB are shown
    error: str | None


class LogPage(BaseModel):
    lines: list[LogLine]
    next_after: int  # the last line's id (or `after` when there was none)
    cloud_init: CloudInitOut | None = None  # with cloud_init=true (the default)


@router.get("/vms/{vm_id}/logs", response_model=LogPage)
async def vm_logs(
    vm_id: str,
    request: Request,
    service: ProvisionerDep,
    scope: OwnerDep,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    follow: bool = False,
    cloud_init: bool = True,
    last_event_id: Annotated[str | None, Header(max_length=20, pattern=r"^[0-9]+$")] = None,
) -> Any:
    """The VM's job events (every job: create, power, delete, keys), oldest first, and with `cloud_init=true` the
    guest's cloud-init output read over SSH (when it runs). `follow=true`: a server-sent event stream of them as they
    come (`id:` is a job line's id, reconnect with Last-Event-ID; `event: cloud-init` carries new cloud-init output),
    until the client leaves."""
    view = await run_in_threadpool(operator_view, service, vm_id, scope)
    start = int(last_event_id) if last_event_id is not None else after
    if not follow:
        lines = await run_in_threadpool(_log_lines, service, view.instance.id, start, limit)
        page = LogPage(lines=lines, next_after=lines[-1].id if lines else start)
        if cloud_init:
            read = await _cloud_init(service, view, None)
            page.cloud_init = CloudInitOut(output=read.text, truncated=read.truncated, error=read.error)
        return page
    return StreamingResponse(
        _follow(request, service, view.instance.id, start, cloud_init),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


async def _follow(
    request: Request, service: Provisioner, vmid: int, after: int, cloud_init: bool
) -> AsyncIterator[str]:
    quiet_since = time.monotonic()
    output = CloudInitFollow(service, vmid) if cloud_init else None
    while not await request.is_disconnected():
        lines = await run_in_threadpool(_log_lines, service, vmid, after, 500)
        for line in lines:
            after = line.id
            yield f"id: {line.id}\ndata: {line.model_dump_json()}\n\n"
        chunk = await output.poll() if output is not None else None
        if chunk is not None:
            yield f"event: cloud-init\ndata: {chunk.model_dump_json()}\n\n"
        if lines or chunk is not None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": still here\n\n"
        await asyncio.sleep(FOLLOW_POLL_S)


class CloudInitChunk(BaseModel):
    text: str  # new output since the last chunk
    error: str | None  # why it cannot be read now (sent when the reason changes)


class CloudInitFollow:
    """New cloud-init output of a followed VM, read every CLOUD_INIT_POLL_S while it runs."""

    def __init__(self, service: Provisioner, vmid: int) -> None:
        self._service, self._vmid = service, vmid
        self._offset: int | None = None  # the first read is the tail, then the output from where it ended
        self._error: str | None = None
        self._due = 0.0

    async def poll(self) -> CloudInitChunk | None:
        if time.monotonic() < self._due:
            return None
        self._due = time.monotonic() + CLOUD_INIT_POLL_S
        view = await run_in_threadpool(self._service.view, str(self._vmid))
        read = await _cloud_init(self._service, view, self._offset)
        if read.error is None:
            self._offset = read.next_offset
        changed = read.error != self._error
        self._error = read.error
        return CloudInitChunk(text=read.text, error=read.error) if read.text or changed else None


async def _cloud_init(service: Provisioner, view: InstanceView, offset: int | None) -> OutputRead:
    login = service.guest_login(view)
    if isinstance(login, str):
        return OutputRead.failed(offset, login)
    return await read_output(login, service.seeds.token(view.instance), offset)


def _log_lines(service: Provisioner, vmid: int, after: int, limit: int) -> list[LogLine]:
    return [
        LogLine(
            id=event.id,
            at=event.created_at,
            job_id=job.id,
            kind=job.kind,
            event=event.event,
            task=event.task,
            stdout=event.stdout,
        )
        for event, job in service.instance_events(vmid, after, limit)
    ]
