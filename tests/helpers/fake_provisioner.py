"""A stand-in for engine.service.Provisioner behind the HTTP apps: canned answers, and every call recorded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.audit import Entry
from engine.errors import NotFound
from engine.flavours import FlavourSpec
from engine.intake import CreateRequest
from engine.models import VISA_OWNER, AuditEntry, Flavour, Instance, Job, JobEvent, JobKind, JobState, Lifecycle
from engine.naming import as_vmid
from engine.proxmox import NodeInfo, Snapshot, VmInfo
from engine.service import InstanceView, Listing, WorkerView
from engine.tokens import Principal

GiB = 1024**3
CREATED = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
TEMPLATE = VmInfo(9000, "debian-12-cloud", "pve1", "stopped", True, 1, GiB, 3 * GiB, None, frozenset())


def instance_view(
    vmid: int,
    lifecycle: Lifecycle = Lifecycle.PROVISIONED,
    active_job: JobKind | None = None,
    vm_status: str | None = "running",
    vm_lock: str | None = None,
    snapshot_ok: bool = True,
    seed_overdue: bool = False,
    delete_overdue: bool = False,
    **fields: Any,
) -> InstanceView:
    """An instance as the service describes it: by default ACTIVE (provisioned, running, with an address)."""
    values: dict[str, Any] = {
        "id": vmid,
        "name": f"VISA-INSTANCE-{vmid}",
        "image_id": "9000",
        "flavour_id": "small",
        "lifecycle": lifecycle,
        "address": "198.18.0.5",
        "security_groups": ["default"],
        "fault_message": None,
        "fault_details": None,
        "fault_at": None,
        "created_at": CREATED,
        "updated_at": CREATED,
        "delete_requested_at": None,
        "owner": VISA_OWNER,
    }
    instance = Instance(**(values | fields))
    return InstanceView(
        instance,
        active_job,
        vm_status,
        vm_lock,
        snapshot_ok,
        seed_overdue=seed_overdue,
        delete_overdue=delete_overdue,
    )


def job(job_id: str, instance_id: int, kind: JobKind = JobKind.CREATE, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": job_id,
        "kind": kind,
        "instance_id": instance_id,
        "state": JobState.SUCCESSFUL,
        "params": {"template": 9000},
        "attempts": 1,
        "cancel_requested": False,
        "result": {"address": "198.18.0.5"},
        "error": None,
        "created_at": CREATED,
        "started_at": CREATED,
        "finished_at": CREATED,
    }
    return Job(**(values | fields))


def job_event(job_id: str, counter: int, event: str = "runner_on_ok", **fields: Any) -> JobEvent:
    values: dict[str, Any] = {
        "job_id": job_id,
        "counter": counter,
        "event": event,
        "task": "Converge the VM",
        "changed": True,
        "stdout": "changed: [vm]",
        "data": {"host": "vm"},
        "created_at": CREATED,
    }
    return JobEvent(**(values | fields))


class FakeCluster:
    def __init__(self) -> None:
        self.current: Snapshot | None = Snapshot(taken_at=0, nodes={"pve1": NodeInfo("pve1", True, 32, 128 * GiB)})

    def snapshot(self) -> Snapshot | None:
        return self.current


def worker_view(worker_id: str, **fields: Any) -> WorkerView:
    values: dict[str, Any] = {
        "id": worker_id,
        "host": "worker-1",
        "pid": 4242,
        "slots": 2,
        "started_at": CREATED,
        "heartbeat_at": CREATED,
        "draining": False,
        "running_jobs": 0,
    }
    return WorkerView(**(values | fields))


class FakeProvisioner:
    """What the VISA, operator and health routes call. It answers from its own dicts as the service answers from the
    store (NotFound for ids it does not hold), records every call in `calls`, and raises `failure` from every call
    when it is set, as a service whose store or Proxmox is gone would."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.failure: Exception | None = None
        self.templates = [TEMPLATE]
        self.flavour_rows = {"small": Flavour(id="small", name="Small", cpus=2, ram_mb=4096, disk_gb=20)}
        self.groups = ["default", "ssh", "web"]
        self.limits = {
            "maxTotalRamSize": 131072,
            "totalRamUsed": 4096,
            "maxTotalInstances": 1000,
            "totalInstancesUsed": 1,
            "maxTotalCores": 128,
            "totalCoresUsed": 2,
        }
        self.instances: dict[int, InstanceView] = {}
        self.job_rows: dict[str, Job] = {}
        self.worker_rows: list[WorkerView] = []
        self.alive_workers = 1
        self.events: dict[str, list[JobEvent]] = {}
        self.next_vmid = 100123
        self.cluster = FakeCluster()
        self.principals: dict[str, Principal] = {}  # stored tokens, by token
        self.audit: list[Entry] = []

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if self.failure is not None:
            raise self.failure

    def _view(self, instance_id: str, owner: str | None = None) -> InstanceView:
        vmid = as_vmid(instance_id)
        if vmid is None or vmid not in self.instances or not self._owned(self.instances[vmid], owner):
            raise NotFound(f"instance {instance_id!r} does not exist")
        return self.instances[vmid]

    @staticmethod
    def _owned(view: InstanceView, owner: str | None) -> bool:
        return owner is None or view.instance.owner == owner

    def _job(self, job_id: str, owner: str | None = None) -> Job:
        job = self.job_rows.get(job_id)
        if job is None or (owner is not None and not self._owned(self.instances[job.instance_id], owner)):
            raise NotFound(f"job {job_id!r} does not exist")
        return job

    # --- VISA

    def images(self) -> list[VmInfo]:
        self._call("images")
        return self.templates

    def image(self, image_id: str) -> VmInfo:
        self._call("image", image_id)
        for template in self.templates:
            if str(template.vmid) == image_id:
                return template
        raise NotFound(f"image {image_id!r} does not exist")

    def flavours(self) -> list[Flavour]:
        self._call("flavours")
        return list(self.flavour_rows.values())

    def flavour(self, flavour_id: str) -> Flavour:
        self._call("flavour", flavour_id)
        if flavour_id not in self.flavour_rows:
            raise NotFound(f"flavour {flavour_id!r} does not exist")
        return self.flavour_rows[flavour_id]

    def security_groups(self) -> list[str]:
        self._call("security_groups")
        return self.groups

    def metrics(self) -> dict[str, int]:
        self._call("metrics")
        return self.limits

    def views(self, listing: Listing) -> list[InstanceView]:
        self._call("views", listing.owner)
        chosen = [
            view
            for view in self.instances.values()
            if self._owned(view, listing.owner)
            and view.instance.owner != listing.not_owner
            and (listing.after is None or view.instance.id > listing.after)
            and (listing.name_prefix is None or view.instance.name.startswith(listing.name_prefix))
        ]
        return sorted(chosen, key=lambda view: view.instance.id)[: listing.limit]

    def view(self, instance_id: str, owner: str | None = None) -> InstanceView:
        self._call("view", instance_id, owner)
        return self._view(instance_id, owner)

    def instance_security_groups(self, instance_id: str, owner: str | None = None) -> list[str]:
        self._call("instance_security_groups", instance_id, owner)
        return list(self._view(instance_id, owner).instance.security_groups)

    async def create(self, request: CreateRequest) -> int:
        self._call("create", request)
        return self.next_vmid

    def delete(self, instance_id: str, owner: str | None = None) -> None:
        self._call("delete", instance_id, owner)
        self._view(instance_id, owner)

    def power(self, instance_id: str, kind: JobKind, owner: str | None = None) -> None:
        self._call("power", instance_id, kind, owner)
        self._view(instance_id, owner)

    def add_security_group(self, instance_id: str, group: str, owner: str | None = None) -> None:
        self._call("add_security_group", instance_id, group, owner)
        self._view(instance_id, owner)

    def remove_security_group(self, instance_id: str, group: str, owner: str | None = None) -> None:
        self._call("remove_security_group", instance_id, group, owner)
        self._view(instance_id, owner)

    # --- operator

    def jobs(self, state: JobState | None, instance_id: int | None, limit: int, owner: str | None = None) -> list[Job]:
        self._call("jobs", state, instance_id, limit, owner)
        wanted = [
            j
            for j in self.job_rows.values()
            if (state is None or j.state == state)
            and (instance_id is None or j.instance_id == instance_id)
            and (owner is None or self._owned(self.instances[j.instance_id], owner))
        ]
        return wanted[:limit]

    def workers_alive(self) -> int:
        return self.alive_workers

    def workers(self) -> list[WorkerView]:
        self._call("workers")
        return list(self.worker_rows)

    def job(self, job_id: str, owner: str | None = None) -> Job:
        self._call("job", job_id, owner)
        return self._job(job_id, owner)

    def job_events(self, job_id: str, after: int, limit: int, owner: str | None = None) -> list[JobEvent]:
        self._call("job_events", job_id, after, limit, owner)
        self._job(job_id, owner)
        return [e for e in self.events.get(job_id, []) if e.counter > after][:limit]

    def cancel(self, job_id: str, owner: str | None = None) -> Job | None:
        self._call("cancel", job_id, owner)
        try:
            return self._job(job_id, owner)
        except NotFound:
            return None

    # --- access

    def authenticate(self, token: str) -> Principal | None:
        return self.principals.get(token)

    async def record(self, entry: Entry) -> None:
        self.audit.append(entry)

    def audit_entries(self, **filters: Any) -> list[AuditEntry]:
        self._call("audit_entries", filters)
        rows = [
            AuditEntry(
                id=n,
                at=e.at,
                actor=e.actor,
                action=e.action,
                target=e.target,
                params=e.params,
                status=e.status,
                client=e.client,
            )
            for n, e in enumerate(self.audit, start=1)
        ]
        before = filters.get("before_id")
        wanted = [
            r
            for r in reversed(rows)
            if (before is None or r.id < before)
            and all(filters.get(k) in (None, getattr(r, k)) for k in ("actor", "action", "target"))
        ]
        return wanted[: filters.get("limit", 100)]

    def put_flavour(self, spec: FlavourSpec) -> Flavour:
        self._call("put_flavour", spec)
        self.flavour_rows[spec.id] = spec.to_row()
        return self.flavour_rows[spec.id]

    def delete_flavour(self, flavour_id: str) -> None:
        self._call("delete_flavour", flavour_id)
        if self.flavour_rows.pop(flavour_id, None) is None:
            raise NotFound(f"flavour {flavour_id!r} does not exist")

    def check_database(self) -> None:
        self._call("check_database")
