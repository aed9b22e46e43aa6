"""The Golem listener's routes (/api/v1 on PROVISIONER_GOLEM_HOST:PROVISIONER_GOLEM_PORT), unauthenticated as Golem's
protocol is: off by default, rate-limited per client address, capped in VMs and in resources per VM, every VM on a
lease, every change in the audit log. Its VMs are ordinary instances (owner `golem`, user `ubuntu`) made and changed
by the same jobs as the operator API's; each is reported `running` only once its SSH forward listens."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from api.access import AuditTrail
from api.golem.forwarder import Forwarder
from api.golem.ratelimit import RateLimit
from api.golem.schemas import Access, AddKey, CreateJob, CreateVm, JobInfo, ProviderInfo, ResourcesOut, VmInfo
from api.vms import SIZES, VmState, vm_state
from common.validators import as_utc
from engine.errors import InvalidSSHKeyError, NoCapacityError, NotFound, ProvisionerError, QuotaLimit
from engine.intake import CUSTOM_FLAVOUR, CreateRequest, Resources
from engine.models import Job, JobKind, JobState
from engine.service import InstanceView, Listing, Provisioner
from engine.sshkeys import InvalidSSHKey, fingerprint, normalise_key
from engine.tokens import Quotas

GOLEM_OWNER = "golem"
GOLEM_USER = "ubuntu"  # the requestor CLI logs in as ubuntu, always
WAIT_POLL_S = 1.0
POWER_WAIT_S = 300.0
FINISHED = (JobState.SUCCESSFUL, JobState.FAILED, JobState.CANCELED)
# What GolemApi.info shows besides the state's columns (a list reads only these).
INFO_COLUMNS = frozenset({"name", "cores", "memory_mb", "disk_gb", "fault_message", "fault_details"})
STATUSES = {
    VmState.BUILDING: "creating",
    VmState.STARTING: "starting",
    VmState.STOPPING: "stopping",
    VmState.STOPPED: "stopped",
    VmState.REBOOTING: "restarting",
    VmState.DELETING: "deleting",
    VmState.ERROR: "error",
    VmState.UNKNOWN: "unknown",
}


class GolemApi:
    """What the routes share: the service, the forwarder (which ports listen) and the settings."""

    def __init__(self, service: Provisioner, forwarder: Forwarder) -> None:
        self.service = service
        self.settings = service.settings
        self.forwarder = forwarder

    def view(self, name: str) -> InstanceView:
        return self.service.view_by_name(GOLEM_OWNER, name)

    def status(self, view: InstanceView) -> str:
        state = vm_state(view)
        if state is VmState.RUNNING:  # running for the CLI once it can log in: cloud-init done, the forward up
            instance = view.instance
            ready = instance.phoned_home_at is not None or instance.adopted
            return "running" if ready and self.forwarder.port_of(instance.id) is not None else "creating"
        return STATUSES[state]

    def info(self, view: InstanceView) -> VmInfo:
        instance = view.instance
        status_ = self.status(view)
        return VmInfo(
            id=instance.name,
            name=instance.name,
            status=status_,
            resources=ResourcesOut(cpu=instance.cores, memory=instance.memory_mb // 1024, storage=instance.disk_gb),
            ip_address=self.settings.golem_listen_host,
            ssh_port=self.forwarder.port_of(instance.id),
            created_at=_iso(instance.created_at),
            updated_at=_iso(instance.updated_at),
            error_message=(instance.fault_details or instance.fault_message or "error") if status_ == "error" else None,
        )

    def create_request(self, body: CreateVm, key: str) -> CreateRequest:
        cpu, memory_mb, disk_gb = self._resources(body)
        return CreateRequest(
            name=body.name,
            image_id=self.settings.golem_image or self._first_image(),
            flavour_id=CUSTOM_FLAVOUR,
            security_groups=[],
            metadata={"golem_stream_id": str(body.stream_id)} if body.stream_id is not None else {},
            boot_command=None,
            owner=GOLEM_OWNER,
            resources=Resources(cpu, memory_mb, disk_gb),
            ssh_keys=(key,),
            login_user=GOLEM_USER,
            expires_at=datetime.now(UTC) + timedelta(seconds=self.settings.golem_lease_s),
            quotas=Quotas(max_vms=self.settings.golem_max_vms),
        )

    def _resources(self, body: CreateVm) -> tuple[int, int, int]:
        cpu: int
        if body.resources is not None:
            cpu, memory_mb, disk_gb = body.resources.cpu, body.resources.memory * 1024, body.resources.storage
        elif body.size is not None:
            cpu, memory_mb, disk_gb = SIZES[body.size]
        else:
            raise Refused(422, "give either size or resources")
        settings = self.settings
        limits = [
            ("cpu", cpu, settings.golem_max_vm_cpus, ""),
            ("memory", memory_mb // 1024, settings.golem_max_vm_memory_gb, " GB"),
            ("storage", disk_gb, settings.golem_max_vm_storage_gb, " GB"),
        ]
        for what, asked, most, unit in limits:
            if asked > most:
                raise Refused(400, f"{what} {asked}{unit} is more than this provider rents per VM ({most}{unit})")
        return cpu, memory_mb, disk_gb

    def _first_image(self) -> str:
        images = sorted(self.service.images(), key=lambda template: template.vmid)
        if not images:
            raise Refused(503, "this provider has no image to make VMs from")
        return str(images[0].vmid)


class Refused(Exception):
    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def build_app(api: GolemApi, rate_limit: RateLimit) -> FastAPI:
    app = FastAPI(title="Golem-compatible provider", docs_url=None, redoc_url=None, openapi_url="/api/v1/openapi.json")
    app.state.provisioner = api.service  # the audit trail appends through it
    app.add_middleware(AuditTrail, actor_of=lambda _scope, _path: GOLEM_OWNER)
    app.add_middleware(PerClientLimit, limit=rate_limit)
    naming = asyncio.Lock()

    @app.exception_handler(Refused)
    async def refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=404)

    @app.exception_handler(ProvisionerError)
    async def provisioner_error(_request: Request, exc: ProvisionerError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/api/v1/provider/info", response_model=ProviderInfo)
    def provider_info() -> ProviderInfo:
        settings = api.settings
        return ProviderInfo(
            provider_id=settings.provider_id or "",
            ip_address=settings.golem_listen_host,
            country=settings.provider_country,
            platform=settings.provider_platform,
        )

    @app.post("/api/v1/vms", name="golem_create_vm", response_model=None)
    async def create_vm(body: CreateVm, asynchronous: Annotated[bool, Query(alias="async")] = False) -> Any:
        """Sync (CLI ≤ 0.1.54): the VM once it runs with its forward; `?async=true`: 202 with its create job."""
        try:
            key = normalise_key(body.ssh_key)
        except InvalidSSHKey as exc:
            raise Refused(422, f"ssh_key: {exc}") from exc
        request = await run_in_threadpool(api.create_request, body, key)
        try:
            async with naming:  # a name is one VM's: the look and the create together, one create at a time
                if await run_in_threadpool(_exists, api, body.name):
                    raise Refused(409, f"VM {body.name} already exists")
                created = await api.service.create_vm(request)
        except QuotaLimit as exc:
            raise Refused(409, f"this provider rents at most {api.settings.golem_max_vms} VMs at once") from exc
        except NoCapacityError as exc:
            raise Refused(409, f"insufficient resources: {exc.message}") from exc
        except InvalidSSHKeyError as exc:
            raise Refused(422, exc.message) from exc
        job_id = str(created.job["id"])
        if asynchronous:
            return JSONResponse(CreateJob(job_id=job_id, vm_id=body.name, status="creating").model_dump(), 202)
        return await _until_running(api, body.name, job_id)

    @app.get("/api/v1/vms", response_model=list[VmInfo])
    def list_vms() -> list[VmInfo]:
        return [api.info(view) for view in api.service.views(Listing(INFO_COLUMNS, owner=GOLEM_OWNER))]

    @app.get("/api/v1/vms/jobs/{job_id}", response_model=JobInfo)
    def create_job(job_id: str) -> JobInfo:
        job = api.service.job(job_id, GOLEM_OWNER)
        if job.kind != JobKind.CREATE:
            raise NotFound(f"job {job_id!r} does not exist")
        view = api.service.view(str(job.instance_id), GOLEM_OWNER)
        return JobInfo(
            job_id=job.id,
            vm_id=view.instance.name,
            status=_job_status(api, job, view),
            error=job.error or (view.instance.fault_details if vm_state(view) is VmState.ERROR else None),
            created_at=_iso(job.created_at),
            updated_at=_iso(job.finished_at or job.started_at or job.created_at),
        )

    @app.get("/api/v1/vms/{name}", response_model=VmInfo)
    def get_vm(name: str) -> VmInfo:
        return api.info(api.view(name))

    @app.get("/api/v1/vms/{name}/access", response_model=None)
    def access(name: str) -> Any:
        view = api.view(name)
        port = api.forwarder.port_of(view.instance.id)
        host = api.settings.golem_listen_host
        answer = Access(ssh_host=host, ssh_port=port, vm_id=name, multipass_name=str(view.instance.id))
        if port is None or api.status(view) != "running":
            answer.status, answer.ssh_port = "creating", None
            return JSONResponse(answer.model_dump(), status_code=202)
        return answer.model_dump(exclude_none=True)

    @app.post("/api/v1/vms/{name}/stop", name="golem_stop_vm", response_model=VmInfo)
    async def stop_vm(name: str) -> VmInfo:
        return await _power(api, name, JobKind.SHUTDOWN)

    @app.post("/api/v1/vms/{name}/start", name="golem_start_vm", response_model=VmInfo)
    async def start_vm(name: str) -> VmInfo:
        return await _power(api, name, JobKind.START)

    @app.delete("/api/v1/vms/{name}", name="golem_delete_vm")
    def delete_vm(name: str) -> Response:
        """200 with an empty body, also for a VM that does not exist (as upstream: the CLI's destroy is then done)."""
        try:
            view = api.view(name)
        except NotFound:
            return Response(status_code=200)
        api.service.delete(str(view.instance.id), GOLEM_OWNER)
        return Response(status_code=200)

    @app.get("/api/v1/vms/{name}/stream")
    def stream(name: str) -> JSONResponse:
        api.view(name)
        return JSONResponse({"detail": "streaming payments not enabled on this provider"}, status_code=400)

    @app.post("/api/v1/vms/{name}/ssh-keys", name="golem_add_key")
    def add_key(name: str, body: AddKey) -> dict[str, Any]:
        try:
            key = normalise_key(body.key)
        except InvalidSSHKey as exc:
            raise Refused(422, f"key: {exc}") from exc
        view = api.view(name)
        _instance, job = api.service.add_ssh_key(view.instance.id, GOLEM_OWNER, key)
        return {"vm_id": name, "fingerprint": fingerprint(key), "job_id": job.id if job is not None else None}

    return app


class PerClientLimit:
    """429 with Retry-After for a client address over the rate limit, before anything else runs."""

    def __init__(self, app: ASGIApp, limit: RateLimit) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            wait = self.limit.take(client[0] if client else "")
            if wait > 0:
                body = json.dumps({"detail": "too many requests from this address"}).encode()
                headers = [(b"content-type", b"application/json"), (b"retry-after", str(int(wait) + 1).encode())]
                await send({"type": "http.response.start", "status": 429, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _exists(api: GolemApi, name: str) -> bool:
    try:
        api.view(name)
    except NotFound:
        return False
    return True


def _job_status(api: GolemApi, job: Job, view: InstanceView) -> Literal["creating", "ready", "failed"]:
    if job.state in (JobState.FAILED, JobState.CANCELED) or vm_state(view) is VmState.ERROR:
        return "failed"
    return "ready" if job.state == JobState.SUCCESSFUL and api.status(view) == "running" else "creating"


async def _until_running(api: GolemApi, name: str, job_id: str) -> VmInfo:
    deadline = time.monotonic() + api.settings.ready_timeout_s
    while time.monotonic() < deadline:
        view = await run_in_threadpool(api.view, name)
        job = await run_in_threadpool(api.service.job, job_id, GOLEM_OWNER)
        if _job_status(api, job, view) == "failed":
            error = job.error or view.instance.fault_details or "the VM could not be created"
            raise Refused(500, f"VM {name} failed: {error}")
        if api.status(view) == "running":
            return api.info(view)
        await asyncio.sleep(WAIT_POLL_S)
    raise Refused(504, f"VM {name} was not running within {api.settings.ready_timeout_s} s")


async def _power(api: GolemApi, name: str, kind: JobKind) -> VmInfo:
    view = await run_in_threadpool(api.view, name)
    job = await run_in_threadpool(api.service.power, str(view.instance.id), kind, GOLEM_OWNER)
    deadline = time.monotonic() + POWER_WAIT_S
    while job.state not in FINISHED and time.monotonic() < deadline:
        await asyncio.sleep(WAIT_POLL_S)
        job = await run_in_threadpool(api.service.job, job.id, GOLEM_OWNER)
    if job.state != JobState.SUCCESSFUL:
        raise Refused(500, f"{kind} of VM {name}: {job.error or job.state}")
    return api.info(await run_in_threadpool(api.view, name))


def _iso(moment: datetime) -> str:
    return as_utc(moment).isoformat()
