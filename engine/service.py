"""The provisioning service: validates requests, reserves VMIDs, persists instances and enqueues jobs.

Both HTTP faces (the VISA web provider and the operator API) go through this class; it never talks to
Proxmox to change anything (jobs do), and reads only the cluster snapshot.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine import cloudinit
from engine.db import Database
from engine.errors import (
    BackendUnavailable,
    Conflict,
    InvalidSSHKeyError,
    NoCapacityError,
    NotFound,
    QuotaExceeded,
    UnknownFlavour,
    UnknownImage,
    UnknownSecurityGroup,
)
from engine.flavours import list_flavours
from engine.jobs.executor import Executor
from engine.jobs.runner import ADDRESS, HostOutcome
from engine.models import Flavour, Instance, Job, JobKind, JobState, Lifecycle, utcnow
from engine.naming import hostname, vm_name
from engine.placement import NoCapacity, Request, Reservation, choose_node, node_loads
from engine.proxmox import ClusterView, ProxmoxUnavailable, Snapshot
from engine.settings import Settings
from engine.sshkeys import InvalidSSHKey, normalise_key

log = logging.getLogger(__name__)

MANAGED_TAG = "provisioner"
# The discovery registry group every VISA instance is registered in (create.yml registers it once ACTIVE).
DISCOVERY_GROUP = "visa"
ACTIVE_LIFECYCLES = (Lifecycle.BUILDING, Lifecycle.PROVISIONED, Lifecycle.ERROR)
POWER_JOBS = (JobKind.START, JobKind.SHUTDOWN, JobKind.STOP, JobKind.REBOOT)


@dataclass(frozen=True)
class CreateRequest:
    name: str
    image_id: str
    flavour_id: str
    security_groups: list[str]
    metadata: dict[str, str | None]
    boot_command: str | None


@dataclass(frozen=True)
class InstanceView:
    """What the HTTP layers need to describe one instance."""

    instance: Instance
    active_job: str | None  # kind of the oldest pending/running job, if any
    vm_status: str | None  # Proxmox status, None when absent from a fresh snapshot
    vm_lock: str | None
    snapshot_ok: bool


class Provisioner:
    def __init__(self, settings: Settings, db: Database, cluster: ClusterView, site_keys: list[str]) -> None:
        self.settings = settings
        self.db = db
        self.cluster = cluster
        self.site_keys = site_keys
        self.executor: Executor | None = None
        self._vmid_lock = threading.Lock()
        self._inflight: dict[int, Reservation] = {}  # reserved, not committed yet
        self._last_vmid: int | None = None

    # ------------------------------------------------------------------ reads

    def images(self) -> list[Any]:
        return self._snapshot_or_fail().templates

    def image(self, image_id: str) -> Any:
        vmid = _as_vmid(image_id)
        template = self._snapshot_or_fail().vms.get(vmid) if vmid is not None else None
        if template is None or not template.template:
            raise NotFound(f"image {image_id!r} does not exist")
        return template

    def flavours(self) -> list[Flavour]:
        with self.db.session() as session:
            return list_flavours(session)

    def flavour(self, flavour_id: str) -> Flavour:
        with self.db.session() as session:
            row = session.get(Flavour, str(flavour_id))
        if row is None:
            raise NotFound(f"flavour {flavour_id!r} does not exist")
        return row

    def security_groups(self) -> list[str]:
        try:
            return self.cluster.firewall_groups()
        except ProxmoxUnavailable as exc:
            raise BackendUnavailable("Proxmox is unreachable") from exc

    def views(self, instance_id: int | None = None) -> list[InstanceView]:
        """Instances we manage (not deleted), with their job and Proxmox state; no Proxmox request."""
        snapshot = self.cluster.snapshot()
        with self.db.session() as session:
            query = select(Instance).where(Instance.lifecycle != Lifecycle.DELETED)
            if instance_id is not None:
                query = query.where(Instance.id == instance_id)
            instances = list(session.scalars(query.order_by(Instance.id)))
            jobs = self._open_jobs(session, [i.id for i in instances] if instance_id is not None else None)
        views = []
        for instance in instances:
            vm = snapshot.vms.get(instance.id) if snapshot else None
            views.append(
                InstanceView(
                    instance,
                    jobs.get(instance.id),
                    vm.status if vm else None,
                    vm.lock if vm else None,
                    snapshot is not None,
                )
            )
        return views

    def view(self, instance_id: str) -> InstanceView:
        vmid = _as_vmid(instance_id)
        found = self.views(vmid) if vmid is not None else []
        if not found:
            raise NotFound(f"instance {instance_id!r} does not exist")
        return found[0]

    def instance_security_groups(self, instance_id: str) -> list[str]:
        return list(self.view(instance_id).instance.security_groups)

    def metrics(self) -> dict[str, int]:
        """VISA's six limits: committed vCPUs and MB (not load), our instance quota and count."""
        snapshot = self._snapshot_or_fail()
        nodes = [n for n in snapshot.nodes.values() if n.online and self._node_allowed(n.name)]
        guests = [vm for vm in snapshot.vms.values() if not vm.template and self._node_allowed(vm.node)]
        with self.db.session() as session:
            used = session.scalar(select(func.count(Instance.id)).where(Instance.lifecycle.in_(ACTIVE_LIFECYCLES)))
            pending = self._reservations(session, snapshot)
        return {
            "maxTotalInstances": self.settings.max_instances,
            "totalInstancesUsed": int(used or 0),
            "maxTotalCores": int(sum(n.maxcpu for n in nodes) * self.settings.cpu_overcommit),
            "totalCoresUsed": int(sum(vm.maxcpu for vm in guests) + sum(r.cores for r in pending)),
            "maxTotalRamSize": int(sum(n.maxmem for n in nodes) * self.settings.memory_overcommit) // 1024**2,
            "totalRamUsed": int(sum(vm.maxmem for vm in guests) // 1024**2 + sum(r.memory_mb for r in pending)),
        }

    # ----------------------------------------------------------------- create

    def create(self, request: CreateRequest) -> Instance:
        flavour = self.flavour_or_unknown(request.flavour_id)
        snapshot = self._current_snapshot()
        template = self._template(snapshot, request.image_id)
        self._check_groups(request.security_groups)
        keys = self._instance_keys(request.metadata)
        full_clone = flavour.full_clone if flavour.full_clone is not None else self.settings.full_clone
        allowed = None if self._clone_can_leave_node(snapshot, template, full_clone) else frozenset({template.node})
        reservation = self._reserve(snapshot, flavour, allowed)
        try:
            instance = Instance(
                id=reservation.vmid,
                name=request.name,
                vm_name=vm_name(request.name, reservation.vmid),
                image_id=str(template.vmid),
                flavour_id=flavour.id,
                node=reservation.node,
                cores=flavour.cpus,
                memory_mb=flavour.ram_mb,
                disk_gb=max(flavour.disk_gb, -(-template.maxdisk // 1024**3)),
                lifecycle=Lifecycle.BUILDING,
                boot_command=request.boot_command,
                meta=dict(request.metadata),
                security_groups=_unique(request.security_groups),
                ssh_keys=keys,
                seed_token=secrets.token_urlsafe(32),
            )
            with self.db.session() as session:
                session.add(instance)
                self._enqueue(
                    session,
                    instance,
                    JobKind.CREATE,
                    {"template": template.vmid, "template_node": template.node, "full_clone": full_clone},
                )
        finally:
            with self._vmid_lock:
                self._inflight.pop(reservation.vmid, None)
        self._notify()
        log.info("accepted instance %s (%s) on %s", instance.id, instance.vm_name, instance.node)
        return instance

    def _reserve(self, snapshot: Snapshot, flavour: Flavour, allowed: frozenset[str] | None) -> Reservation:
        """Quota, placement and VMID under one short lock; the caller persists the row outside it.

        Reservations not committed yet are held in memory, so concurrent requests see each other's."""
        with self._vmid_lock, self.db.session() as session:
            used = session.scalar(select(func.count(Instance.id)).where(Instance.lifecycle.in_(ACTIVE_LIFECYCLES)))
            if (used or 0) + len(self._inflight) >= self.settings.max_instances:
                raise QuotaExceeded(f"the instance quota ({self.settings.max_instances}) is used up")
            pending = self._reservations(session, snapshot) + list(self._inflight.values())
            loads = node_loads(
                snapshot,
                pending,
                self.settings.cpu_overcommit,
                self.settings.memory_overcommit,
                self.settings.node_allowlist,
            )
            try:
                node = choose_node(loads, Request(flavour.cpus, flavour.ram_mb, allowed), self.settings.select_coeff)
            except NoCapacity as exc:
                raise NoCapacityError(str(exc)) from exc
            vmid = self._next_vmid(session, snapshot)
            reservation = Reservation(vmid, node, flavour.cpus, flavour.ram_mb)
            self._inflight[vmid] = reservation
            return reservation

    def flavour_or_unknown(self, flavour_id: str) -> Flavour:
        try:
            return self.flavour(flavour_id)
        except NotFound as exc:
            raise UnknownFlavour(f"flavour {flavour_id!r} does not exist") from exc

    # ------------------------------------------------------------- mutations

    def delete(self, instance_id: str) -> Job:
        """Queue the deletion; asking again while one is queued returns it, after a failed one retries."""
        with self.db.session() as session:
            instance = self._instance(session, instance_id, allow_deleting=True)
            open_delete = session.scalar(
                select(Job).where(
                    Job.instance_id == instance.id,
                    Job.kind == JobKind.DELETE,
                    Job.state.in_((JobState.PENDING, JobState.RUNNING)),
                )
            )
            if open_delete is not None:
                return open_delete
            for job in session.scalars(
                select(Job).where(Job.instance_id == instance.id, Job.state == JobState.PENDING)
            ):
                job.state, job.error, job.finished_at = JobState.CANCELED, "superseded by delete", utcnow()
            instance.lifecycle = Lifecycle.DELETING
            job = self._enqueue(session, instance, JobKind.DELETE, {}, max_attempts=5)
        self._notify()
        return job

    def power(self, instance_id: str, kind: JobKind) -> Job:
        assert kind in POWER_JOBS
        with self.db.session() as session:
            instance = self._live_instance(session, instance_id)
            if instance.lifecycle == Lifecycle.BUILDING:
                raise Conflict(f"instance {instance_id} is still being built")
            job = self._enqueue(session, instance, kind, {})
        self._notify()
        return job

    def add_security_group(self, instance_id: str, group: str) -> Job | None:
        self._check_groups([group])
        return self._change_groups(instance_id, add=[group], remove=[])

    def remove_security_group(self, instance_id: str, group: str) -> Job | None:
        return self._change_groups(instance_id, add=[], remove=[group])

    def _change_groups(self, instance_id: str, add: list[str], remove: list[str]) -> Job | None:
        with self.db.session() as session:
            instance = self._live_instance(session, instance_id)
            current = list(instance.security_groups)
            wanted = [g for g in current if g not in remove] + [g for g in add if g not in current]
            if wanted == current:
                return None
            instance.security_groups = wanted
            # Queued behind a create that may already be running with the old list; idempotent either way.
            job = self._enqueue(session, instance, JobKind.FIREWALL, {"add": add, "remove": remove})
        self._notify()
        return job

    # ---------------------------------------------------------- seed server

    def seed_instance(self, token: str) -> Instance:
        with self.db.session() as session:
            instance = session.scalar(select(Instance).where(Instance.seed_token == token))
            if instance is None or instance.lifecycle == Lifecycle.DELETED:
                raise NotFound("no such seed")
            return instance

    def seed_context(self, instance: Instance) -> cloudinit.SeedContext:
        return cloudinit.SeedContext(
            instance_id=f"iid-{instance.id}-{int(instance.created_at.timestamp())}",
            hostname=hostname(instance.name, instance.id),
            user=self.settings.cloud_init_user,
            ssh_keys=list(instance.ssh_keys),
            metadata=dict(instance.meta),
            boot_command=instance.boot_command,
            phone_home_url=f"{self.settings.seed_base_url}{instance.seed_token}/phone-home",
            project_id=self.settings.project_id,
        )

    def record_phone_home(self, token: str, host_key: str | None) -> None:
        with self.db.session() as session:
            instance = session.scalar(select(Instance).where(Instance.seed_token == token))
            if instance is None or instance.lifecycle == Lifecycle.DELETED:
                raise NotFound("no such seed")
            instance.phoned_home_at = utcnow()
            if host_key and host_key.strip():
                instance.host_key = host_key.strip()[:1000]

    # -------------------------------------------------------- job plumbing

    def hostvars(self, session: Session, job: Job, instance: Instance) -> dict[str, Any]:
        """The per-VM variables of docs/contract.md §2 for this job."""
        base: dict[str, Any] = {"vm_vmid": instance.id, "vm_name": instance.vm_name, "vm_node": instance.node}
        kind = JobKind(job.kind)
        if kind is JobKind.CREATE:
            storage = self.settings.vm_storage
            base |= {
                "vm_template_vmid": int(job.params["template"]),
                "vm_template_node": job.params["template_node"],
                "vm_full_clone": bool(job.params["full_clone"]),
                "vm_cores": instance.cores,
                "vm_memory_mb": instance.memory_mb,
                "vm_disk_gb": instance.disk_gb,
                "vm_tags": [MANAGED_TAG],
                "vm_description": f"managed-by={MANAGED_TAG} instance={instance.id}",
                "vm_seed_url": f"{self.settings.seed_base_url}{instance.seed_token}/",
                "vm_firewall_groups": list(instance.security_groups),
                "vm_wait_for_address": True,
                "vm_address_timeout": self.settings.address_timeout_s,
                "vm_start_retries": self.settings.max_start_retry,
                "vm_discovery_groups": [DISCOVERY_GROUP],
            }
            if storage and job.params["full_clone"]:
                base["vm_storage"] = storage
        elif kind is JobKind.FIREWALL:
            base |= {
                "vm_firewall_groups_add": job.params.get("add", []),
                "vm_firewall_groups_remove": job.params.get("remove", []),
            }
        elif kind in (JobKind.START, JobKind.REBOOT):
            base |= {"vm_wait_for_address": True, "vm_address_timeout": self.settings.address_timeout_s}
        elif kind in (JobKind.SHUTDOWN, JobKind.STOP, JobKind.DELETE):
            base["vm_force_stop"] = kind is not JobKind.SHUTDOWN
        return base

    def on_outcome(self, session: Session, job: Job, instance: Instance, outcome: HostOutcome) -> None:
        """Apply a finished job's result to its instance."""
        address = outcome.facts.get(ADDRESS)
        if address:
            instance.address = address
        kind = JobKind(job.kind)
        if kind is JobKind.CREATE:
            if outcome.ok:
                instance.lifecycle = Lifecycle.PROVISIONED
            elif instance.lifecycle == Lifecycle.BUILDING:
                instance.lifecycle = Lifecycle.ERROR
                instance.fault_message = "instance creation failed"
                instance.fault_details = outcome.error or job.error or "unknown error"
                instance.fault_at = utcnow()
        elif kind is JobKind.DELETE and outcome.ok:
            instance.lifecycle = Lifecycle.DELETED
            instance.deleted_at = utcnow()
            instance.address = None

    # ------------------------------------------------------------- helpers

    def _enqueue(
        self, session: Session, instance: Instance, kind: JobKind, params: dict[str, Any], max_attempts: int = 1
    ) -> Job:
        job = Job(
            id=str(uuid.uuid4()),
            kind=kind,
            instance_id=instance.id,
            params=params,
            state=JobState.PENDING,
            max_attempts=max_attempts,
        )
        session.add(job)
        return job

    def _notify(self) -> None:
        if self.executor is not None:
            self.executor.notify()

    def _live_instance(self, session: Session, instance_id: str) -> Instance:
        return self._instance(session, instance_id, allow_deleting=False)

    def _instance(self, session: Session, instance_id: str, allow_deleting: bool) -> Instance:
        vmid = _as_vmid(instance_id)
        instance = session.get(Instance, vmid) if vmid is not None else None
        gone = (Lifecycle.DELETED,) if allow_deleting else (Lifecycle.DELETED, Lifecycle.DELETING)
        if instance is None or instance.lifecycle in gone:
            raise NotFound(f"instance {instance_id!r} does not exist")
        return instance

    def _open_jobs(self, session: Session, ids: list[int] | None) -> dict[int, str]:
        query = select(Job.instance_id, Job.kind).where(Job.state.in_((JobState.PENDING, JobState.RUNNING)))
        if ids is not None:
            query = query.where(Job.instance_id.in_(ids))
        open_jobs: dict[int, str] = {}
        for instance_id, kind in session.execute(query.order_by(Job.created_at)):
            open_jobs.setdefault(instance_id, kind)
        return open_jobs

    def _snapshot_or_fail(self) -> Snapshot:
        snapshot = self.cluster.snapshot()
        if snapshot is None:
            raise BackendUnavailable("Proxmox is unreachable or the cluster view is stale")
        return snapshot

    def _current_snapshot(self) -> Snapshot:
        """The background snapshot (reservations cover what it does not show yet); a read if it is stale."""
        snapshot = self.cluster.snapshot()
        if snapshot is not None:
            return snapshot
        try:
            return self.cluster.fresh_snapshot()
        except ProxmoxUnavailable as exc:
            raise BackendUnavailable("Proxmox is unreachable") from exc

    def _template(self, snapshot: Snapshot, image_id: str) -> Any:
        vmid = _as_vmid(image_id)
        template = snapshot.vms.get(vmid) if vmid is not None else None
        if template is None or not template.template:
            raise UnknownImage(f"image {image_id!r} does not exist")
        return template

    def _check_groups(self, groups: list[str]) -> None:
        if not groups:
            return
        known = set(self.security_groups())
        unknown = [g for g in groups if g not in known]
        if unknown:
            raise UnknownSecurityGroup(f"unknown security group(s): {', '.join(sorted(set(unknown)))}")

    def _instance_keys(self, metadata: dict[str, str | None]) -> list[str]:
        keys = list(self.site_keys)
        extra = metadata.get(self.settings.ssh_key_metadata_field)
        if extra:
            try:
                key = normalise_key(extra)
            except InvalidSSHKey as exc:
                raise InvalidSSHKeyError(f"metadata field {self.settings.ssh_key_metadata_field!r}: {exc}") from exc
            if key not in keys:
                keys.append(key)
        return keys

    def _reservations(self, session: Session, snapshot: Snapshot) -> list[Reservation]:
        rows = session.execute(
            select(Instance.id, Instance.node, Instance.cores, Instance.memory_mb).where(
                Instance.lifecycle == Lifecycle.BUILDING
            )
        )
        return [Reservation(*row) for row in rows if row[0] not in snapshot.vms]

    def _clone_can_leave_node(self, snapshot: Snapshot, template: Any, full_clone: bool) -> bool:
        """PVE clones to another node only when the clone's disks go to shared storage."""
        shared = {s.name for s in snapshot.storages if s.shared}
        if full_clone and self.settings.vm_storage:
            return self.settings.vm_storage in shared
        try:
            storages = self.cluster.template_storages(template.node, template.vmid)
        except ProxmoxUnavailable as exc:
            raise BackendUnavailable("Proxmox is unreachable") from exc
        return bool(storages) and storages <= shared

    def _next_vmid(self, session: Session, snapshot: Snapshot) -> int:
        """The next free VMID after the last one handed out, skipping ids in use anywhere; wraps around."""
        low, high = self.settings.vmid_min, self.settings.vmid_max
        if self._last_vmid is None:
            self._last_vmid = session.scalar(select(func.max(Instance.id)).where(Instance.id.between(low, high))) or (
                low - 1
            )
        span = high - low + 1
        for step in range(1, span + 1):
            candidate = low + (self._last_vmid - low + step) % span
            if candidate in self._inflight or candidate in snapshot.vms or session.get(Instance, candidate):
                continue
            self._last_vmid = candidate
            return candidate
        raise NoCapacityError("no free VMID left in the configured range")

    def _node_allowed(self, node: str) -> bool:
        return not self.settings.node_allowlist or node in self.settings.node_allowlist


def _as_vmid(value: str | int) -> int | None:
    text = str(value).strip()
    if not text.isdigit() or len(text) > 9:
        return None
    return int(text)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
