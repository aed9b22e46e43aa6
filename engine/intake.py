"""Accepting creates: validate, reserve a quota slot, a node and a VMID, store the instance with its job.

Every create goes through one writer thread (engine.group_commit). The creates queued while it was busy
form a group: each is validated and placed in turn against what the store and the cluster snapshot hold
plus the group's earlier creates, then the group is stored with one multi-row INSERT per table in one
transaction, and only after the commit does each caller learn its VMID. Under a burst, the requests no
longer queue behind each other's transactions, and one thread alone hands out VMIDs and node capacity.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import insert, select, tuple_
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from engine.capacity import Capacity, OwnerUsage
from engine.errors import (
    BackendUnavailable,
    IdempotencyConflict,
    InvalidSSHKeyError,
    ProvisionerError,
    StoreUnavailable,
    UnexpectedError,
    UnknownFlavour,
    UnknownImage,
    UnknownSecurityGroup,
)
from engine.group_commit import GroupCommitter
from engine.jobs.kinds import KINDS
from engine.models import VISA_OWNER, Flavour, IdempotencyKey, Instance, Job, JobKind, JobState, Lifecycle, utcnow
from engine.naming import as_vmid, vm_name
from engine.placement import GiB, Request, Reservation
from engine.proxmox import ClusterView, ProxmoxUnavailable, Snapshot, VmInfo
from engine.seeds import SeedTokens
from engine.settings import Settings
from engine.sshkeys import InvalidSSHKey, normalise_key
from engine.store import Store
from engine.tokens import Quotas
from engine.vmids import VmidAllocator

log = logging.getLogger(__name__)

T = TypeVar("T")


CUSTOM_FLAVOUR = "custom"  # the flavour id of a VM made with raw resources


@dataclass(frozen=True)
class Resources:
    cpus: int
    memory_mb: int
    disk_gb: int


@dataclass(frozen=True)
class CreateRequest:
    name: str
    image_id: str  # a template's VMID, or (operator VMs) its name
    flavour_id: str
    security_groups: list[str]
    metadata: dict[str, str | None]
    boot_command: str | None
    owner: str = VISA_OWNER
    resources: Resources | None = None  # instead of the flavour's (flavour_id is then CUSTOM_FLAVOUR)
    ssh_keys: tuple[str, ...] = ()  # the caller's own, beside the site's
    login_user: str | None = None  # cloud-init's user; None: the site's
    expires_at: datetime | None = None  # its lease
    quotas: Quotas = field(default_factory=Quotas)  # the owner's
    idempotency: tuple[str, str] | None = None  # (Idempotency-Key, digest of the body)


@dataclass(frozen=True)
class Created:
    """An accepted create: its VMID, and the rows stored for it (the instance's and its create job's), so the
    caller can describe it without reading them back."""

    vmid: int
    instance: dict[str, Any]
    job: dict[str, Any]


@dataclass(frozen=True)
class ValidCreate:
    request: CreateRequest
    flavour: Flavour
    template: VmInfo
    ssh_keys: list[str]
    full_clone: bool
    allowed_nodes: frozenset[str] | None  # None: any node (the clone's disks go to shared storage)


def check_security_groups(groups: list[str], known: Collection[str]) -> None:
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise UnknownSecurityGroup(f"unknown security group(s): {', '.join(sorted(set(unknown)))}")


class CreateIntake:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        seeds: SeedTokens,
        cluster: ClusterView,
        site_keys: list[str],
        on_committed: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._seeds = seeds
        self._cluster = cluster
        self._site_keys = site_keys
        self._on_committed = on_committed
        self._vmids = VmidAllocator(settings.vmid_min, settings.vmid_max)
        self._writer: GroupCommitter[CreateRequest, Created] = GroupCommitter(self.store_group, name="create-intake")

    def start(self) -> None:
        self._writer.start()

    def stop(self) -> None:
        """Store the creates queued already, then stop."""
        self._writer.stop()

    async def create(self, request: CreateRequest) -> Created:
        """The new instance once it and its create job are committed; ProvisionerError if refused."""
        return await self._writer.commit(request)

    def store_group(self, requests: list[CreateRequest]) -> list[Created | ProvisionerError]:
        """One outcome per request, in order: what was stored for it, or why it was refused. All or none are
        stored."""
        try:
            with self._store.creating() as session:
                outcomes, instances, jobs = self._admit(session, requests)
                if instances:
                    self._store.add_creates(session, instances, jobs)
        except SQLAlchemyError as exc:
            log.error("storing a group of %d create(s) failed, none was stored: %s", len(requests), _describe(exc))
            return [StoreUnavailable("the instance could not be stored; nothing was created") for _ in requests]
        if instances:
            self._on_committed()
        for row in instances:
            log.info("accepted instance %s (%s) on %s", row["id"], row["vm_name"], row["node"])
        return outcomes

    def _admit(
        self, session: Session, requests: list[CreateRequest]
    ) -> tuple[list[Created | ProvisionerError], list[dict[str, Any]], list[dict[str, Any]]]:
        proxmox = GroupReads(self._cluster)
        wanted = {r.flavour_id for r in requests}
        flavours = {f.id: f for f in session.scalars(select(Flavour).where(Flavour.id.in_(wanted)))}
        capacity: Capacity | None = None
        usage = OwnerUsage(session)
        replays = Replays(session, requests)
        outcomes: list[Created | ProvisionerError] = []
        instances: list[dict[str, Any]] = []
        jobs: list[dict[str, Any]] = []
        for request in requests:
            try:
                replayed = replays.earlier(request)
                if replayed is not None:
                    outcomes.append(replayed)
                    continue
                valid = self._validate(request, flavours, proxmox)
                disk_gb = instance_disk_gb(valid)
                usage.check(request.owner, request.quotas, valid.flavour.cpus, valid.flavour.ram_mb, disk_gb)
                capacity = capacity or Capacity(session, proxmox.snapshot(), self._settings, self._vmids)
                reservation = capacity.reserve(Request(valid.flavour.cpus, valid.flavour.ram_mb, valid.allowed_nodes))
                usage.add(request.owner, valid.flavour.cpus, valid.flavour.ram_mb, disk_gb)
            except ProvisionerError as exc:
                outcomes.append(exc)
                continue
            except Exception:  # one request's surprise is its own 500, not its group's
                log.exception("create %r failed unexpectedly; the rest of its group goes on", request.name)
                outcomes.append(UnexpectedError("the create failed unexpectedly; nothing was created"))
                continue
            instances.append(instance_row(valid, reservation, self._seeds.new(reservation.vmid)))
            jobs.append(create_job_row(valid, reservation.vmid))
            created = Created(reservation.vmid, instances[-1], jobs[-1])
            outcomes.append(created)
            replays.add(request, created)
        replays.store()
        return outcomes, instances, jobs

    def _validate(self, request: CreateRequest, flavours: dict[str, Flavour], proxmox: GroupReads) -> ValidCreate:
        flavour = _flavour(request, flavours)
        snapshot = proxmox.snapshot()
        template = _template(snapshot, request.image_id)
        if request.security_groups:
            check_security_groups(request.security_groups, proxmox.security_groups())
        keys = self._instance_keys(request.metadata)
        keys += [key for key in dict.fromkeys(request.ssh_keys) if key not in keys]
        full_clone = flavour.full_clone if flavour.full_clone is not None else self._settings.full_clone
        leaves = self._clone_can_leave_node(proxmox, snapshot, template, full_clone)
        return ValidCreate(request, flavour, template, keys, full_clone, None if leaves else frozenset({template.node}))

    def _instance_keys(self, metadata: dict[str, str | None]) -> list[str]:
        keys = list(self._site_keys)
        field = self._settings.ssh_key_metadata_field
        extra = metadata.get(field)
        if extra:
            try:
                key = normalise_key(extra)
            except InvalidSSHKey as exc:
                raise InvalidSSHKeyError(f"metadata field {field!r}: {exc}") from exc
            if key not in keys:
                keys.append(key)
        return keys

    def _clone_can_leave_node(
        self, proxmox: GroupReads, snapshot: Snapshot, template: VmInfo, full_clone: bool
    ) -> bool:
        """PVE clones to another node only when the clone's disks go to shared storage."""
        shared = {s.name for s in snapshot.storages if s.shared}
        if full_clone and self._settings.vm_storage:
            return self._settings.vm_storage in shared
        storages = proxmox.template_storages(template)
        return bool(storages) and storages <= shared


class GroupReads:
    """The Proxmox facts one group of creates needs, each read at most once for the group.

    A read that failed is not tried again within the group: with Proxmox unreachable, a burst would
    otherwise wait out one timeout per create, one after another, on the single writer thread.
    """

    def __init__(self, cluster: ClusterView) -> None:
        self._cluster = cluster
        self._done: dict[object, Any] = {}

    def snapshot(self) -> Snapshot:
        """The background snapshot (reservations cover what it does not show yet); a read if it is stale."""
        return self._once("snapshot", lambda: self._cluster.snapshot() or self._cluster.fresh_snapshot())

    def security_groups(self) -> list[str]:
        return self._once("security groups", self._cluster.firewall_groups)

    def template_storages(self, template: VmInfo) -> frozenset[str]:
        return self._once(
            ("template storages", template.vmid), lambda: self._cluster.template_storages(template.node, template.vmid)
        )

    def _once(self, key: object, read: Callable[[], T]) -> T:
        if key not in self._done:
            try:
                self._done[key] = read()
            except ProxmoxUnavailable:
                self._done[key] = _UNREACHABLE
        value = self._done[key]
        if value is _UNREACHABLE:
            raise BackendUnavailable("Proxmox is unreachable")
        return value  # type: ignore[no-any-return]


_UNREACHABLE = object()


def _describe(exc: SQLAlchemyError) -> str:
    """The database's own error, first line: SQLAlchemy's message would show the rows, seed tokens included."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return f"{type(cause).__name__}: {next(iter(str(cause).splitlines()), '')}"


def _template(snapshot: Snapshot, image_id: str) -> VmInfo:
    vmid = as_vmid(image_id)
    template = snapshot.vms.get(vmid) if vmid is not None else None
    if template is None:
        named = [vm for vm in snapshot.vms.values() if vm.template and vm.name == image_id]
        template = named[0] if len(named) == 1 else None
    if template is None or not template.template:
        known = sorted(f"{vm.vmid} ({vm.name})" for vm in snapshot.vms.values() if vm.template)
        raise UnknownImage(f"image {image_id!r} does not exist; the images are: {', '.join(known) or 'none'}")
    return template


def _flavour(request: CreateRequest, flavours: dict[str, Flavour]) -> Flavour:
    if request.resources is not None:
        size = request.resources
        label = request.flavour_id or CUSTOM_FLAVOUR  # a size's name, or CUSTOM_FLAVOUR
        return Flavour(id=label, name=label, cpus=size.cpus, ram_mb=size.memory_mb, disk_gb=size.disk_gb)
    flavour = flavours.get(request.flavour_id)
    if flavour is None:
        raise UnknownFlavour(f"flavour {request.flavour_id!r} does not exist")
    return flavour


def instance_disk_gb(valid: ValidCreate) -> int:
    """The flavour's disk, or the template's if that is larger (a clone never shrinks)."""
    return max(valid.flavour.disk_gb, -(-valid.template.maxdisk // GiB))


class Replays:
    """The creates of a group sent with an Idempotency-Key: the same key and body again is the VM made the first time
    (committed, or earlier in this group); another body under the same key is refused. The keys a group names, and
    what was stored for them, are read in three queries for the whole group."""

    def __init__(self, session: Session, requests: list[CreateRequest]) -> None:
        self._session = session
        self._new: dict[tuple[str, str], tuple[str, Created]] = {}
        keyed = {(r.owner, r.idempotency[0]) for r in requests if r.idempotency is not None}
        self._stored: dict[tuple[str, str], tuple[str, Created]] = self._read(keyed) if keyed else {}

    def earlier(self, request: CreateRequest) -> Created | None:
        if request.idempotency is None:
            return None
        key, digest = request.idempotency
        seen = self._new.get((request.owner, key)) or self._stored.get((request.owner, key))
        if seen is None:
            return None
        if seen[0] != digest:
            raise IdempotencyConflict(f"Idempotency-Key {key!r} was used with another request body")
        return seen[1]

    def add(self, request: CreateRequest, created: Created) -> None:
        if request.idempotency is not None:
            key, digest = request.idempotency
            self._new[(request.owner, key)] = (digest, created)

    def _read(self, keyed: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, Created]]:
        rows = list(
            self._session.scalars(
                select(IdempotencyKey).where(tuple_(IdempotencyKey.owner, IdempotencyKey.key).in_(list(keyed)))
            )
        )
        vmids = [row.instance_id for row in rows]
        instances = {i.id: i for i in self._session.scalars(select(Instance).where(Instance.id.in_(vmids)))}
        creates: dict[int, Job] = {}
        query = select(Job).where(Job.instance_id.in_(vmids), Job.kind == JobKind.CREATE).order_by(Job.created_at)
        for job in self._session.scalars(query):
            creates.setdefault(job.instance_id, job)
        return {
            (row.owner, row.key): (
                row.body_hash,
                Created(row.instance_id, _columns(instances[row.instance_id]), _columns(creates[row.instance_id])),
            )
            for row in rows
        }

    def store(self) -> None:
        rows = [
            {"owner": owner, "key": key, "body_hash": digest, "instance_id": created.vmid}
            for (owner, key), (digest, created) in self._new.items()
        ]
        if rows:
            self._session.execute(insert(IdempotencyKey), rows)


def instance_row(valid: ValidCreate, reservation: Reservation, seed: dict[str, str]) -> dict[str, Any]:
    request, flavour, template = valid.request, valid.flavour, valid.template
    return {
        "id": reservation.vmid,
        "name": request.name,
        "vm_name": vm_name(request.name, reservation.vmid),
        "image_id": str(template.vmid),
        "flavour_id": flavour.id,
        "node": reservation.node,
        "cores": flavour.cpus,
        "memory_mb": flavour.ram_mb,
        "disk_gb": instance_disk_gb(valid),
        "owner": request.owner,
        "login_user": request.login_user,
        "expires_at": request.expires_at,
        "lifecycle": Lifecycle.BUILDING,
        "boot_command": request.boot_command,
        "meta": dict(request.metadata),
        "security_groups": list(dict.fromkeys(request.security_groups)),
        "ssh_keys": valid.ssh_keys,
        "created_at": utcnow(),
        **seed,
    }


def create_job_row(valid: ValidCreate, vmid: int) -> dict[str, Any]:
    template = valid.template
    return {
        "id": str(uuid.uuid4()),
        "kind": JobKind.CREATE,
        "instance_id": vmid,
        "params": {"template": template.vmid, "template_node": template.node, "full_clone": valid.full_clone},
        "state": JobState.PENDING,
        "max_attempts": KINDS[JobKind.CREATE].attempts,
        "attempts": 0,
        "cancel_requested": False,
        "result": {},
        "created_at": utcnow(),
    }


def _columns(row: Any) -> dict[str, Any]:
    """A stored row's columns, as the rows the intake inserts."""
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}
