"""The provisioning service: validates requests, reserves VMIDs, persists instances and enqueues jobs.

Both HTTP faces (the VISA web provider and the operator API) go through this class; it never talks to
Proxmox to change anything (jobs do), and reads only the cluster snapshot.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine import cloudinit
from engine.audit import AuditLog, Entry
from engine.capacity import building_reservations, instances_in_quota
from engine.errors import BackendUnavailable, GuestAccessDisabled, NotFound, SiteKey
from engine.flavours import FlavourSpec, list_flavours, upsert_flavour
from engine.guestlogs import GuestLogin
from engine.intake import Created, CreateIntake, CreateRequest, check_security_groups
from engine.jobs.queue import JobQueue
from engine.models import AuditEntry, Flavour, Instance, Job, JobEvent, JobKind, JobState, Lifecycle, Worker, utcnow
from engine.naming import FLAVOUR_ID, JOB_ID, as_vmid, hostname
from engine.proxmox import ClusterView, ProxmoxUnavailable, Snapshot
from engine.seeds import SeedTokens
from engine.settings import Settings
from engine.sshkeys import fingerprint, key_material
from engine.store import Store, aware
from engine.tokens import Principal, Tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerView:
    id: str
    host: str
    pid: int
    slots: int
    started_at: datetime
    heartbeat_at: datetime
    draining: bool
    running_jobs: int


# The columns every listed instance carries: what its state is made of (InstanceView, the HTTP layers' states).
STATE_COLUMNS = frozenset(
    {
        "id",
        "owner",
        "lifecycle",
        "address",
        "created_at",
        "updated_at",
        "delete_requested_at",
        "phoned_home_at",
        "adopted",
    }
)


@dataclass(frozen=True)
class Listing:
    """A list of instances: the columns it shows besides STATE_COLUMNS, and which instances, by id."""

    columns: frozenset[str]
    owner: str | None = None
    not_owner: str | None = None
    after: int | None = None  # ids above this one
    name_prefix: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class InstanceView:
    """What the HTTP layers need to describe one instance."""

    instance: Instance
    active_job: str | None  # kind of the oldest pending/running job, if any
    vm_status: str | None  # Proxmox status, None when absent from a fresh snapshot
    vm_lock: str | None
    snapshot_ok: bool
    # Running with its address for longer than the readiness timeout, but the guest never phoned home: cloud-init
    # did not apply our seed (unreachable, or it failed), so nobody can log in.
    seed_overdue: bool = False
    # Deleting for longer than the delete timeout, and its VM is still there: its deletes keep failing.
    delete_overdue: bool = False


class Provisioner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        seeds: SeedTokens,
        cluster: ClusterView,
        site_keys: list[str],
        queue: JobQueue,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cluster = cluster
        self.site_keys = site_keys
        self.seeds = seeds
        self.queue = queue  # the workers run the jobs this service records; told when there are new ones
        self.intake = CreateIntake(settings, store, seeds, cluster, site_keys, on_committed=queue.notify)
        self.tokens = Tokens(store.db)
        self.audit = AuditLog(store.db)

    def start(self) -> None:
        self.audit.start()
        self.intake.start()

    def stop(self) -> None:
        self.intake.stop()
        self.audit.stop()

    # ------------------------------------------------------------------ reads

    def images(self) -> list[Any]:
        return self._snapshot_or_fail().templates

    def image(self, image_id: str) -> Any:
        vmid = as_vmid(image_id)
        template = self._snapshot_or_fail().vms.get(vmid) if vmid is not None else None
        if template is None or not template.template:
            raise NotFound(f"image {image_id!r} does not exist")
        return template

    def flavours(self) -> list[Flavour]:
        with self.store.read() as session:
            return list_flavours(session)

    def flavour(self, flavour_id: str) -> Flavour:
        flavour_id = _known_form(FLAVOUR_ID, flavour_id, "flavour")
        with self.store.writing() as session:
            row = session.get(Flavour, flavour_id)
        if row is None:
            raise NotFound(f"flavour {flavour_id!r} does not exist")
        return row

    def security_groups(self) -> list[str]:
        try:
            return self.cluster.firewall_groups()
        except ProxmoxUnavailable as exc:
            raise BackendUnavailable("Proxmox is unreachable") from exc

    def views(self, listing: Listing) -> list[InstanceView]:
        """Instances we manage (not deleted), with their job and Proxmox state; no Proxmox request. A listed instance
        is a row of the columns the list names: no ORM object, no JSON it does not show (3x faster at 1,000)."""
        table = Instance.__table__
        query = select(*(c for c in table.columns if c.key in STATE_COLUMNS | listing.columns))
        query = query.where(table.c.lifecycle != Lifecycle.DELETED)
        if listing.owner is not None:
            query = query.where(table.c.owner == listing.owner)
        if listing.not_owner is not None:
            query = query.where(table.c.owner != listing.not_owner)
        if listing.after is not None:
            query = query.where(table.c.id > listing.after)
        if listing.name_prefix is not None:
            query = query.where(table.c.name.startswith(listing.name_prefix, autoescape=True))
        query = query.order_by(table.c.id).limit(listing.limit)
        with self.store.read() as session:
            # A row has the Instance's attributes of its columns; reading another is an AttributeError.
            instances = cast(list[Instance], list(session.connection().execute(query)))
            return self._views(instances, self._open_jobs(session, None))

    def _views(self, instances: list[Instance], jobs: dict[int, str]) -> list[InstanceView]:
        snapshot = self.cluster.snapshot()
        views = []
        overdue_before = utcnow() - timedelta(seconds=self.settings.ready_timeout_s)
        delete_due = utcnow() - timedelta(seconds=self.settings.delete_error_after_s)
        for instance in instances:
            vm = snapshot.vms.get(instance.id) if snapshot else None
            views.append(
                InstanceView(
                    instance,
                    jobs.get(instance.id),
                    vm.status if vm else None,
                    vm.lock if vm else None,
                    snapshot is not None,
                    seed_overdue=_seed_overdue(instance, vm.status if vm else None, overdue_before),
                    delete_overdue=vm is not None and _delete_overdue(instance, delete_due),
                )
            )
        return views

    def view_by_name(self, owner: str, name: str) -> InstanceView:
        """The owner's instance of this name that is not deleted (the newest, if a delete is still under way)."""
        query = (
            select(Instance)
            .where(Instance.owner == owner, Instance.name == name, Instance.lifecycle != Lifecycle.DELETED)
            .order_by(Instance.created_at.desc())
            .limit(1)
        )
        with self.store.read() as session:
            instance = session.scalar(query)
            if instance is None:
                raise NotFound(f"VM {name} not found")
            return self._views([instance], self._open_jobs(session, [instance.id]))[0]

    def view(self, instance_id: str, owner: str | None = None) -> InstanceView:
        """One instance (not deleted; of `owner` when given), whole, with its job and Proxmox state."""
        vmid = as_vmid(instance_id)
        query = select(Instance).where(Instance.id == vmid, Instance.lifecycle != Lifecycle.DELETED)
        if owner is not None:
            query = query.where(Instance.owner == owner)
        with self.store.read() as session:
            instance = session.scalar(query) if vmid is not None else None
            if instance is None:
                raise NotFound(f"instance {instance_id!r} does not exist")
            return self._views([instance], self._open_jobs(session, [instance.id]))[0]

    def instance_security_groups(self, instance_id: str, owner: str | None = None) -> list[str]:
        return list(self.view(instance_id, owner).instance.security_groups)

    def metrics(self) -> dict[str, int]:
        """VISA's six limits: committed vCPUs and MB (not load), our instance quota and count."""
        snapshot = self._snapshot_or_fail()
        nodes = [n for n in snapshot.nodes.values() if n.online and self._node_allowed(n.name)]
        guests = [vm for vm in snapshot.vms.values() if not vm.template and self._node_allowed(vm.node)]
        with self.store.read() as session:
            used = instances_in_quota(session)
            pending = building_reservations(session, snapshot)
        return {
            "maxTotalInstances": self.settings.max_instances,
            "totalInstancesUsed": used,
            "maxTotalCores": int(sum(n.maxcpu for n in nodes) * self.settings.cpu_overcommit),
            "totalCoresUsed": int(sum(vm.maxcpu for vm in guests) + sum(r.cores for r in pending)),
            "maxTotalRamSize": int(sum(n.maxmem for n in nodes) * self.settings.memory_overcommit) // 1024**2,
            "totalRamUsed": int(sum(vm.maxmem for vm in guests) // 1024**2 + sum(r.memory_mb for r in pending)),
        }

    # ----------------------------------------------------------------- create

    async def create(self, request: CreateRequest) -> int:
        """Validate, reserve a VMID and a node, persist the instance with its create job; the VMID once committed."""
        return (await self.intake.create(request)).vmid

    async def create_vm(self, request: CreateRequest) -> Created:
        """As `create`, answering the rows stored (an operator VM's response describes them without a read)."""
        return await self.intake.create(request)

    # ------------------------------------------------------------- mutations

    def delete(self, instance_id: str, owner: str | None = None) -> Job:
        """Queue the deletion; asking again while one is queued returns it, after a failed one retries."""
        job = self.store.request_delete(self._vmid(instance_id), owner)
        self.queue.notify()
        return job

    def power(self, instance_id: str, kind: JobKind, owner: str | None = None) -> Job:
        """Queue a power change; the same change already waiting is answered with that job."""
        job = self.store.request_power(self._vmid(instance_id), kind, owner)
        self.queue.notify()
        return job

    def set_lease(self, vmid: int, owner: str | None, expires_at: datetime | None) -> Instance:
        """A new end for the instance's lease (None: none); the reconciler deletes it then."""
        return self.store.set_lease(vmid, owner, expires_at)

    def add_security_group(self, instance_id: str, group: str, owner: str | None = None) -> Job | None:
        self._check_groups([group])
        return self._change_groups(instance_id, add=[group], remove=[], owner=owner)

    def remove_security_group(self, instance_id: str, group: str, owner: str | None = None) -> Job | None:
        return self._change_groups(instance_id, add=[], remove=[group], owner=owner)

    def _change_groups(self, instance_id: str, add: list[str], remove: list[str], owner: str | None) -> Job | None:
        job = self.store.change_groups(self._vmid(instance_id), add, remove, owner)
        if job is not None:
            self.queue.notify()
        return job

    def ssh_keys(self, vmid: int, owner: str | None) -> tuple[Instance, bool]:
        """The instance (its keys) and whether a key change is under way (a keys job not finished)."""
        return self.store.keys_of(vmid, owner)

    def add_ssh_key(self, vmid: int, owner: str | None, key: str) -> tuple[Instance, Job | None]:
        """The key in the VM's seed at once, and in its guest by a keys job (at its next start when it is stopped)."""
        self._check_guest_access()
        instance, job = self.store.change_keys(vmid, owner, add=key, in_guest=not self.settings.emulated_guests)
        if job is not None:
            self.queue.notify()
        return instance, job

    def remove_ssh_key(self, vmid: int, owner: str | None, key_fingerprint: str) -> tuple[Instance, Job | None]:
        """The key with this fingerprint out of the seed and, by a keys job, out of the guest; never a site key."""
        self._check_guest_access()
        instance, _busy = self.ssh_keys(vmid, owner)
        key = next((k for k in instance.ssh_keys if fingerprint(k) == key_fingerprint), None)
        if key is None:
            raise NotFound(f"instance {vmid} has no key with fingerprint {key_fingerprint}")
        if key_material(key) in {key_material(k) for k in self.site_keys}:
            raise SiteKey(f"{key_fingerprint} is a site key: every VM has it, and the provisioner logs in with it")
        instance, job = self.store.change_keys(vmid, owner, remove=key, in_guest=not self.settings.emulated_guests)
        if job is not None:
            self.queue.notify()
        return instance, job

    def guest_login(self, view: InstanceView) -> GuestLogin | str:
        """How to log in to the VM's guest to read it (engine/guestlogs.py), or why it cannot be done now."""
        instance = view.instance
        if not self.settings.guest_access:
            return "the provisioner has no key in guests (PROVISIONER_GUEST_ACCESS=false)"
        if self.settings.emulated_guests:
            return "the simulator's emulated guests have no SSH (PROVISIONER_SIM_GUESTS=container boots real ones)"
        if view.vm_status != "running" or not instance.address:
            return "the VM is not running"
        if not instance.host_key:
            return "the guest has not phoned home yet"
        user = instance.login_user or self.settings.cloud_init_user
        return GuestLogin(instance.address, user, instance.host_key, self.settings.guest_key_path)

    def _check_guest_access(self) -> None:
        if not self.settings.guest_access:
            raise GuestAccessDisabled(
                "keys cannot change on existing VMs: the provisioner has no key in guests (PROVISIONER_GUEST_ACCESS)"
            )

    # ---------------------------------------------------------- seed server

    def seed_instance(self, token: str) -> Instance:
        with self.store.read() as session:
            instance = session.scalar(select(Instance).where(Instance.seed_token_hash == SeedTokens.digest(token)))
            if instance is None or instance.lifecycle == Lifecycle.DELETED:
                raise NotFound("no such seed")
            return instance

    def seed_context(self, instance: Instance, token: str) -> cloudinit.SeedContext:
        """What the seed documents say to the guest that presented `token` (its phone-home URL holds it)."""
        return cloudinit.SeedContext(
            instance_id=f"iid-{instance.id}-{int(instance.created_at.timestamp())}",
            hostname=hostname(instance.name, instance.id),
            user=instance.login_user or self.settings.cloud_init_user,
            ssh_keys=list(instance.ssh_keys),
            metadata=dict(instance.meta),
            boot_command=instance.boot_command,
            phone_home_url=f"{self.settings.seed_base_url}{token}/phone-home",
            project_id=self.settings.project_id,
        )

    def record_phone_home(self, token: str, host_key: str | None) -> None:
        self.store.record_phone_home(self.seed_instance(token).id, host_key)

    def jobs(self, state: JobState | None, instance_id: int | None, limit: int, owner: str | None = None) -> list[Job]:
        """Jobs, newest first, of a state, an instance and the instances of an owner when given."""
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if owner is not None:
            query = query.join(Instance, Instance.id == Job.instance_id).where(Instance.owner == owner)
        if state is not None:
            query = query.where(Job.state == state)
        if instance_id is not None:
            query = query.where(Job.instance_id == instance_id)
        with self.store.read() as session:
            return list(session.scalars(query))

    def workers(self) -> list[WorkerView]:
        """The workers that joined and did not leave, oldest first, with the jobs each runs."""
        with self.store.read() as session:
            running = dict(
                session.execute(
                    select(Job.worker_id, func.count())
                    .where(Job.state == JobState.RUNNING, Job.worker_id.is_not(None))
                    .group_by(Job.worker_id)
                ).all()
            )
            rows = session.scalars(select(Worker).order_by(Worker.started_at))
            return [
                WorkerView(
                    w.id,
                    w.host,
                    w.pid,
                    w.slots,
                    aware(w.started_at),
                    aware(w.heartbeat_at),
                    w.draining,
                    running.get(w.id, 0),
                )
                for w in rows
            ]

    def workers_alive(self) -> int:
        """Workers that beat within the lost-after window and take new jobs."""
        cutoff = utcnow() - timedelta(seconds=self.settings.worker_lost_after_s)
        with self.store.read() as session:
            query = select(func.count()).where(Worker.draining.is_(False), Worker.heartbeat_at >= cutoff)
            return int(session.scalar(query.select_from(Worker)) or 0)

    def job(self, job_id: str, owner: str | None = None) -> Job:
        """One job (of an instance of `owner`'s when given)."""
        job_id = _known_form(JOB_ID, job_id, "job")
        with self.store.read() as session:
            job = session.get(Job, job_id)
            if job is None or (owner is not None and session.get_one(Instance, job.instance_id).owner != owner):
                raise NotFound(f"job {job_id!r} does not exist")
            return job

    def job_events(self, job_id: str, after: int, limit: int, owner: str | None = None) -> list[JobEvent]:
        """The job's Ansible events with a counter above `after`, in order."""
        job_id = self.job(job_id, owner).id
        with self.store.read() as session:
            query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.counter > after)
            return list(session.scalars(query.order_by(JobEvent.counter).limit(limit)))

    def instance_events(self, vmid: int, after_id: int, limit: int) -> list[tuple[JobEvent, Job]]:
        """The Ansible events of every job of an instance, in the order they were stored, after an event's row id."""
        query = (
            select(JobEvent, Job)
            .join(Job, Job.id == JobEvent.job_id)
            .where(Job.instance_id == vmid, JobEvent.id > after_id)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        with self.store.read() as session:
            return [(event, job) for event, job in session.execute(query)]

    def put_flavour(self, spec: FlavourSpec) -> Flavour:
        with self.store.writing() as session:
            return upsert_flavour(session, spec)

    def delete_flavour(self, flavour_id: str) -> None:
        """Remove a flavour; instances made with it keep their size."""
        flavour_id = _known_form(FLAVOUR_ID, flavour_id, "flavour")
        with self.store.read() as session:
            row = session.get(Flavour, flavour_id)
            if row is None:
                raise NotFound(f"flavour {flavour_id!r} does not exist")
            session.delete(row)

    def check_database(self) -> None:
        """Raise if the database does not answer (readiness)."""
        with self.store.read() as session:
            session.scalar(select(Job.id).limit(1))

    def cancel(self, job_id: str, owner: str | None = None) -> Job | None:
        """Cancel a job: a pending one at once, a running one with its playbook run; None if there is no such job (of
        an instance of `owner`'s when given)."""
        if not JOB_ID.fullmatch(job_id):
            return None
        if owner is not None:
            try:
                self.job(job_id, owner)
            except NotFound:
                return None
        return self.queue.cancel(job_id)

    # ------------------------------------------------------------- access

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a stored API token (engine/tokens.py); None if it is not one, or revoked."""
        return self.tokens.authenticate(token)

    async def record(self, entry: Entry) -> None:
        """Append to the audit log (engine/audit.py)."""
        await self.audit.record(entry)

    def audit_entries(self, **filters: Any) -> list[AuditEntry]:
        return self.audit.entries(**filters)

    # ------------------------------------------------------------- helpers

    def _vmid(self, instance_id: str) -> int:
        vmid = as_vmid(instance_id)
        if vmid is None:
            raise NotFound(f"instance {instance_id!r} does not exist")
        return vmid

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

    def _check_groups(self, groups: list[str]) -> None:
        if groups:
            check_security_groups(groups, self.security_groups())

    def _node_allowed(self, node: str) -> bool:
        return not self.settings.node_allowlist or node in self.settings.node_allowlist


def _known_form(form: re.Pattern[str], value: str, what: str) -> str:
    """value, if it has the form of the ids `what` has; NotFound (without echoing it) otherwise."""
    if not form.fullmatch(value):
        raise NotFound(f"no such {what}")
    return value


def _delete_overdue(instance: Instance, due: datetime) -> bool:
    if instance.lifecycle != Lifecycle.DELETING:
        return False
    asked = instance.delete_requested_at or instance.updated_at
    return aware(asked) < due


def _seed_overdue(instance: Instance, vm_status: str | None, overdue_before: datetime) -> bool:
    """True for a running instance of ours that never phoned home although it was created before the deadline."""
    if instance.adopted or instance.phoned_home_at is not None or vm_status != "running":
        return False
    if instance.lifecycle != Lifecycle.PROVISIONED or not instance.address:
        return False
    return aware(instance.created_at) < overdue_before
