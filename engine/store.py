"""The store: every change of job and instance state, each a named transition.

A transition is one write transaction (`Database.write`: the write lock from its first statement) that checks the
state it starts from and changes it only if it still holds: a compare-and-set. Nothing else writes `jobs.state`
or `instances.lifecycle`; the service, the executor and the reconciler call these methods, and the HTTP layers
call the service.

Job states: PENDING → RUNNING (claim) → SUCCESSFUL | FAILED | ERROR | CANCELED (finish), or back to PENDING
(retry, interrupted, recovered); PENDING → CANCELED (cancel, supersede). A RUNNING job is finished only by the run
that claimed it (its `run_id`), so a run that was given up on (recovered, timed out) cannot overwrite what
happened since.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, Table, delete, distinct, func, insert, select, update
from sqlalchemy.orm import Session

from engine.db import Database
from engine.errors import Conflict, NotFound
from engine.jobs.kinds import KINDS, apply_outcome
from engine.jobs.outcome import HostOutcome
from engine.models import (
    Duty,
    IdempotencyKey,
    Instance,
    Job,
    JobEvent,
    JobKind,
    JobState,
    Lifecycle,
    Worker,
    utcnow,
)
from engine.sshkeys import key_material

OPEN = (JobState.PENDING, JobState.RUNNING)
MAX_REMOVED_KEYS = 64  # keys removed through the API that every key change keeps absent from the guest
POWER_JOBS = (JobKind.START, JobKind.SHUTDOWN, JobKind.STOP, JobKind.REBOOT)


@dataclass(frozen=True)
class Finished:
    """How one job of a run ended, as the executor read it from the run."""

    job_id: str
    outcome: HostOutcome
    result: dict[str, Any]
    state: JobState  # SUCCESSFUL, FAILED, ERROR or CANCELED; FAILED may become a retry
    interrupted: bool = False  # stopped by our own shutdown, not by a user: run it again at the next start
    extra_attempt: bool = False  # the run died under it (killed, crashed): one more try than its kind's


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    pgid: int | None


# Picks, among the ready jobs (the oldest job of each idle instance, if due; oldest first), those to run together;
# given the runs free on every live worker (None when claiming for no worker).
ClaimPolicy = Callable[[list[Job], datetime, int | None], list[Job]]


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.db.session() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A read-then-write of what no named transition covers (the flavour catalogue), under the write lock: on
        SQLite a transaction that read first and then writes beside another writer fails at once, lock or no."""
        with self.db.write() as session:
            yield session

    # ------------------------------------------------------------ creates

    @contextmanager
    def creating(self) -> Iterator[Session]:
        """The intake's transaction: it reads quota and reservations, then `add_creates` in the same lock."""
        with self.db.write() as session:
            yield session

    @staticmethod
    def add_creates(session: Session, instances: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> None:
        """create: BUILDING instances, each with its PENDING create job (one multi-row INSERT per table)."""
        session.execute(insert(cast(Table, Instance.__table__)), instances)
        session.execute(insert(cast(Table, Job.__table__)), jobs)

    # ------------------------------------------------------------ intents

    def request_delete(self, vmid: int | None, owner: str | None = None) -> Job:
        """DELETING, its pending jobs superseded, and a delete job; the open delete if there is one already. With
        owner, an instance of someone else's does not exist."""
        with self.db.write() as session:
            instance = _instance(session, vmid, gone=(Lifecycle.DELETED,), owner=owner)
            open_delete = session.scalar(_open_jobs(instance.id).where(Job.kind == JobKind.DELETE))
            if open_delete is not None:
                return open_delete
            self._supersede(session, instance.id, "superseded by delete")
            if instance.lifecycle != Lifecycle.DELETING:
                instance.lifecycle = Lifecycle.DELETING
                instance.delete_requested_at = utcnow()
            return _enqueue(session, instance.id, JobKind.DELETE, {}, max_attempts=KINDS[JobKind.DELETE].attempts)

    def request_power(self, vmid: int | None, kind: JobKind, owner: str | None = None) -> Job:
        """A power job; the same request already waiting (not yet running) is that job, not a second one."""
        assert kind in POWER_JOBS
        with self.db.write() as session:
            instance = _instance(session, vmid, owner=owner)
            if instance.lifecycle == Lifecycle.BUILDING:
                raise Conflict(f"instance {vmid} is still being built")
            pending = list(session.scalars(_open_jobs(instance.id).order_by(Job.created_at)))
            if pending and pending[-1].kind == kind and pending[-1].state == JobState.PENDING:
                return pending[-1]
            return _enqueue(session, instance.id, kind, {})

    def change_groups(
        self, vmid: int | None, add: list[str], remove: list[str], owner: str | None = None
    ) -> Job | None:
        """The instance's security groups, read and written under the write lock (concurrent changes both count)."""
        with self.db.write() as session:
            instance = _instance(session, vmid, lock=True, owner=owner)
            current = list(instance.security_groups)
            wanted = [g for g in current if g not in remove] + [g for g in add if g not in current]
            if wanted == current:
                return None
            instance.security_groups = wanted
            # Queued behind a create that may already be running with the old list; idempotent either way.
            return _enqueue(session, instance.id, JobKind.FIREWALL, {"add": add, "remove": remove})

    def keys_of(self, vmid: int, owner: str | None) -> tuple[Instance, bool]:
        """The instance (with its keys) and whether a keys job for it has not finished."""
        with self.db.session() as session:
            instance = _instance(session, vmid, owner=owner)
            busy = session.scalar(_open_jobs(vmid).where(Job.kind == JobKind.KEYS).limit(1))
            return instance, busy is not None

    def change_keys(
        self, vmid: int, owner: str | None, add: str | None = None, remove: str | None = None, in_guest: bool = True
    ) -> tuple[Instance, Job | None]:
        """The instance's SSH keys (its seed's and, by a keys job when `in_guest`, its guest's), read and written
        under the write lock; no job when nothing changes. `remove` is a key the instance has (the caller found it)."""
        with self.db.write() as session:
            instance = _instance(session, vmid, lock=True, owner=owner)
            keys, removed = list(instance.ssh_keys), list(instance.ssh_keys_removed)
            if add is not None and key_material(add) not in map(key_material, keys):
                keys.append(add)
                removed = [k for k in removed if key_material(k) != key_material(add)]
            if remove is not None and remove in keys:
                keys.remove(remove)
                removed = [*removed, remove][-MAX_REMOVED_KEYS:]
            if keys == instance.ssh_keys:
                return instance, None
            instance.ssh_keys, instance.ssh_keys_removed = keys, removed
            if not in_guest:
                return instance, None
            # A keys job still waiting applies whatever the keys are when it runs: no second one.
            waiting = session.scalar(_open_jobs(vmid).where(Job.kind == JobKind.KEYS, Job.state == JobState.PENDING))
            job = waiting or _enqueue(session, vmid, JobKind.KEYS, {}, max_attempts=KINDS[JobKind.KEYS].attempts)
            return instance, job

    def record_phone_home(self, instance_id: int, host_key: str | None) -> None:
        with self.db.write() as session:
            instance = _instance(session, instance_id)
            instance.phoned_home_at = utcnow()
            if host_key and host_key.strip():
                instance.host_key = host_key.strip()[:1000]

    # ------------------------------------------------------------ the executor's transitions

    def claim(
        self,
        choose: ClaimPolicy,
        run_id: str,
        worker_id: str | None = None,
        lost_before: datetime | None = None,
        hand_over: Callable[[Any], None] | None = None,
    ) -> list[str]:
        """claim: the jobs `choose` picks among the ready ones, PENDING → RUNNING under `run_id` on worker_id; their
        ids. A draining or lost worker (no row) claims nothing. `hand_over(connection)` runs in the same transaction
        once jobs were claimed, given its DB-API connection (a queue records the run in it: both happen or neither)."""
        now = utcnow()
        with self.db.write() as session:
            free_slots = None
            if worker_id is not None:
                worker = session.get(Worker, worker_id)
                if worker is None or worker.draining:
                    return []
                free_slots = _free_slots(session, lost_before or now)
            busy = set(session.scalars(select(Job.instance_id).where(Job.state == JobState.RUNNING)))
            pending = session.scalars(select(Job).where(Job.state == JobState.PENDING).order_by(Job.created_at))
            seen: set[int] = set()
            ready: list[Job] = []
            for job in pending:
                first_for_instance = job.instance_id not in seen
                seen.add(job.instance_id)
                if first_for_instance and job.instance_id not in busy and _due(job, now):
                    ready.append(job)
            chosen = [job.id for job in choose(ready, now, free_slots)]
            if not chosen:
                return []
            claimed = session.scalars(
                update(Job)
                .where(Job.id.in_(chosen), Job.state == JobState.PENDING)
                .values(
                    state=JobState.RUNNING,
                    run_id=run_id,
                    worker_id=worker_id,
                    started_at=now,
                    attempts=Job.attempts + 1,
                )
                .returning(Job.id)
            )
            ids = list(claimed)
            if ids and hand_over is not None:
                hand_over(session.connection().connection.driver_connection)
            return ids

    def start_run(self, run_id: str, worker_id: str) -> list[str]:
        """A claimed run starts on worker_id (a queue handed it to that worker): its RUNNING jobs, none if it was
        recovered or finished meanwhile (it must not run then)."""
        with self.db.write() as session:
            started = session.scalars(
                update(Job)
                .where(Job.run_id == run_id, Job.state == JobState.RUNNING)
                .values(worker_id=worker_id)
                .returning(Job.id)
            )
            return list(started)

    def record_run_process(self, run_id: str, pgid: int) -> None:
        """The process group of a run's ansible-playbook, so a restart can kill what a crash left running."""
        with self.db.write() as session:
            session.execute(
                update(Job).where(Job.run_id == run_id, Job.state == JobState.RUNNING).values(run_pgid=pgid)
            )

    def run_jobs(self, job_ids: Sequence[str]) -> list[tuple[Job, Instance]]:
        with self.db.session() as session:
            jobs = session.scalars(select(Job).where(Job.id.in_(job_ids)).order_by(Job.created_at))
            return [(job, session.get_one(Instance, job.instance_id)) for job in jobs]

    def finish(self, run_id: str, finished: list[Finished], retry_backoff_s: float) -> list[Job]:
        """finish / retry / interrupted, for each job still RUNNING under run_id; the jobs it changed."""
        changed = []
        with self.db.write() as session:
            for item in finished:
                job = session.scalar(
                    select(Job).where(Job.id == item.job_id, Job.run_id == run_id, Job.state == JobState.RUNNING)
                )
                if job is None:  # given up on (recovered, timed out) while it ran: what happened since stands
                    continue
                changed.append(job)
                if item.interrupted:
                    job.state, job.run_id, job.started_at, job.run_pgid = JobState.PENDING, None, None, None
                    job.worker_id = None
                    job.attempts = max(0, job.attempts - 1)
                    continue
                job.result = item.result
                job.error = item.outcome.error if not item.outcome.ok else None
                job.run_pgid = None
                if item.state == JobState.FAILED and job.attempts < job.max_attempts + item.extra_attempt:
                    job.state, job.run_id, job.worker_id = JobState.PENDING, None, None
                    job.not_before = utcnow() + timedelta(seconds=retry_backoff_s * job.attempts)
                    continue
                job.state = item.state
                job.finished_at = utcnow()
                instance = session.get(Instance, job.instance_id)
                if instance is not None:
                    apply_outcome(job, instance, item.outcome)
        return changed

    def cancel(self, job_id: str) -> tuple[Job | None, str | None]:
        """cancel: a PENDING job at once; a RUNNING one is marked. The job, and the run to stop if every job of it
        asked to be canceled."""
        with self.db.write() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None, None
            stop_run = None
            if job.state == JobState.PENDING:
                self._cancel_pending(session, job, "canceled before it ran")
            elif job.state == JobState.RUNNING:
                job.cancel_requested = True
                session.flush()
                others = session.scalar(
                    select(Job.id).where(Job.run_id == job.run_id, Job.cancel_requested.is_(False)).limit(1)
                )
                stop_run = job.run_id if others is None else None
            session.flush()
            session.expunge(job)
            return job, stop_run

    def stale_runs(self, worker_id: str | None) -> list[StaleRun]:
        """The runs a lost worker left RUNNING (None: jobs no worker claimed, from before workers), to kill before
        `recover`."""
        with self.db.session() as session:
            rows = session.execute(
                select(Job.run_id, Job.run_pgid)
                .where(Job.state == JobState.RUNNING, Job.worker_id == worker_id)
                .distinct()
            )
            return [StaleRun(run_id, pgid) for run_id, pgid in rows if run_id]

    def recover(self, worker_id: str | None, reason: str = "its worker was lost") -> int:
        """recover: the jobs a lost worker left RUNNING go back to PENDING, or fail for the kinds that must not run
        twice; the worker's row goes. None: the jobs no worker claimed (left by a service from before workers)."""
        with self.db.write() as session:
            stale = list(session.scalars(select(Job).where(Job.state == JobState.RUNNING, Job.worker_id == worker_id)))
            self._hand_back(session, stale, reason)
            if worker_id is not None:
                session.execute(delete(Worker).where(Worker.id == worker_id))
            return len(stale)

    def recover_run(self, run_id: str, reason: str) -> int:
        """recover, for one run whose worker stopped running it (a queue found it stalled): as `recover`."""
        with self.db.write() as session:
            stale = list(session.scalars(select(Job).where(Job.state == JobState.RUNNING, Job.run_id == run_id)))
            self._hand_back(session, stale, reason)
            return len(stale)

    def _hand_back(self, session: Session, stale: list[Job], reason: str) -> None:
        for job in stale:
            job.run_id, job.run_pgid, job.worker_id = None, None, None
            if KINDS[JobKind(job.kind)].rerun_after_crash:
                job.state = JobState.PENDING
            else:
                self._end(session, job, JobState.FAILED, f"interrupted: {reason}; not repeated")

    # ------------------------------------------------------------ workers

    def register_worker(self, worker_id: str, host: str, pid: int, slots: int = 1) -> None:
        with self.db.write() as session:
            now = utcnow()
            session.add(Worker(id=worker_id, host=host, pid=pid, slots=slots, started_at=now, heartbeat_at=now))

    def heartbeat(self, worker_id: str, draining: bool = False) -> bool:
        """The worker is alive (and draining or not); False if it was declared lost meanwhile (its row is gone)."""
        with self.db.write() as session:
            changed = session.execute(
                update(Worker).where(Worker.id == worker_id).values(heartbeat_at=utcnow(), draining=draining)
            )
            return bool(changed.rowcount)  # type: ignore[attr-defined]

    def leave(self, worker_id: str) -> None:
        """A worker that stopped cleanly: its row goes (its runs ended or were handed back)."""
        with self.db.write() as session:
            session.execute(delete(Worker).where(Worker.id == worker_id))

    def workers(self) -> list[Worker]:
        with self.db.session() as session:
            return list(session.scalars(select(Worker).order_by(Worker.started_at)))

    def orphaned(self) -> bool:
        """Are there RUNNING jobs no worker claimed (a service from before workers crashed under them)?"""
        with self.db.session() as session:
            query = select(Job.id).where(Job.state == JobState.RUNNING, Job.worker_id.is_(None)).limit(1)
            return session.scalar(query) is not None

    def runs_to_stop(self, run_ids: Sequence[str]) -> set[str]:
        """Among run_ids, those every RUNNING job of which asked to be canceled."""
        if not run_ids:
            return set()
        with self.db.session() as session:
            rows = session.execute(
                select(Job.run_id, Job.cancel_requested).where(Job.run_id.in_(run_ids), Job.state == JobState.RUNNING)
            )
            wanted: dict[str, bool] = {}
            for run_id, canceled in rows:
                if run_id is not None:
                    wanted[run_id] = wanted.get(run_id, True) and bool(canceled)
            return {run_id for run_id, stop in wanted.items() if stop}

    def running_run_ids(self) -> set[str]:
        with self.db.session() as session:
            query = select(Job.run_id).where(Job.state == JobState.RUNNING, Job.run_id.is_not(None)).distinct()
            return {run_id for run_id in session.scalars(query) if run_id}

    def overdue_runs(self, started_before: datetime, worker_id: str | None) -> list[StaleRun]:
        """A worker's runs RUNNING since before started_before."""
        with self.db.session() as session:
            rows = session.execute(
                select(Job.run_id, Job.run_pgid)
                .where(Job.state == JobState.RUNNING, Job.started_at < started_before, Job.worker_id == worker_id)
                .distinct()
            )
            return [StaleRun(run_id, pgid) for run_id, pgid in rows if run_id]

    def fail_run(self, run_id: str, error: str) -> int:
        """A run given up on (it outlived its timeout): its RUNNING jobs end in ERROR."""
        with self.db.write() as session:
            jobs = list(session.scalars(select(Job).where(Job.run_id == run_id, Job.state == JobState.RUNNING)))
            for job in jobs:
                self._end(session, job, JobState.ERROR, error)
            return len(jobs)

    def add_events(self, rows: list[JobEvent]) -> None:
        with self.db.session() as session:
            session.add_all(rows)

    # ------------------------------------------------------------ duties

    def hold_duty(self, name: str, holder: str, lease_s: float) -> bool:
        """Take or renew the duty's lease for lease_s seconds; False while another holder's lease runs. A holder
        that dies stops renewing, and the next to ask after its lease ran out takes the duty over."""
        now = utcnow()
        with self.db.write() as session:
            duty = session.get(Duty, name)
            if duty is None:
                session.add(Duty(name=name, holder=holder, expires_at=now + timedelta(seconds=lease_s)))
                return True
            if duty.holder != holder and aware(duty.expires_at) > now:
                return False
            duty.holder, duty.expires_at = holder, now + timedelta(seconds=lease_s)
            return True

    def release_duty(self, name: str, holder: str) -> None:
        """Give the duty up (a clean stop): the next process to ask takes it at once."""
        with self.db.write() as session:
            session.execute(delete(Duty).where(Duty.name == name, Duty.holder == holder))

    # ------------------------------------------------------------ the reconciler's transitions

    def follow_vm(self, vmid: int, node: str, address: str | None) -> None:
        """A provisioned instance's node (it follows migrations) and, when it has none, its address."""
        with self.db.write() as session:
            instance = session.get(Instance, vmid)
            if instance is None or instance.lifecycle != Lifecycle.PROVISIONED:
                return
            instance.node = node
            if address and not instance.address:
                instance.address = address

    def mark_vanished(self, vmid: int) -> bool:
        """PROVISIONED → DELETED for a VM gone from Proxmox, unless a job of it is open."""
        with self.db.write() as session:
            instance = session.get(Instance, vmid)
            if instance is None or instance.lifecycle != Lifecycle.PROVISIONED:
                return False
            if session.scalar(_open_jobs(vmid).limit(1)) is not None:
                return False
            _deleted(instance)
            return True

    def retry_delete(self, vmid: int, not_before: datetime) -> Job | None:
        """A new delete job for a DELETING instance whose deletes all failed (the VM is still there)."""
        return self._follow_up(vmid, JobKind.DELETE, not_before, lambda i: i.lifecycle == Lifecycle.DELETING)

    def request_registration(self, vmid: int, not_before: datetime) -> Job | None:
        """A register job for a provisioned instance the discovery registry did not take yet."""
        return self._follow_up(
            vmid,
            JobKind.REGISTER,
            not_before,
            lambda i: i.lifecycle == Lifecycle.PROVISIONED and i.registration_pending,
        )

    def _follow_up(
        self, vmid: int, kind: JobKind, not_before: datetime, still: Callable[[Instance], bool]
    ) -> Job | None:
        """One job of kind, due at not_before, for an instance that is `still` as it was seen, with no job open."""
        with self.db.write() as session:
            instance = session.get(Instance, vmid)
            if instance is None or not still(instance):
                return None
            if session.scalar(_open_jobs(vmid).limit(1)) is not None:
                return None
            job = _enqueue(session, vmid, kind, {}, max_attempts=1)
            job.not_before = not_before
            return job

    def end_leases(self, now: datetime) -> list[int]:
        """The instances whose lease ended by now go DELETING with a delete job (as `request_delete`); their ids."""
        ended = select(Instance).where(
            Instance.expires_at.is_not(None),
            Instance.expires_at <= now,
            Instance.lifecycle.in_((Lifecycle.BUILDING, Lifecycle.PROVISIONED, Lifecycle.ERROR)),
        )
        with self.db.session() as session:  # most passes find none: no write lock for them
            if session.scalar(ended.with_only_columns(Instance.id).limit(1)) is None:
                return []
        with self.db.write() as session:
            due = list(session.scalars(ended))
            for instance in due:
                self._supersede(session, instance.id, "superseded by the end of its lease")
                instance.lifecycle = Lifecycle.DELETING
                instance.delete_requested_at = now
                _enqueue(session, instance.id, JobKind.DELETE, {}, max_attempts=KINDS[JobKind.DELETE].attempts)
            return [instance.id for instance in due]

    def set_lease(self, vmid: int, owner: str | None, expires_at: datetime | None) -> Instance:
        """A new end for an instance's lease (None: no end)."""
        with self.db.write() as session:
            instance = _instance(session, vmid, owner=owner)
            instance.expires_at = expires_at
            session.flush()
            session.expunge(instance)
            return instance

    def forget_idempotency_keys(self, before: datetime) -> None:
        with self.db.write() as session:
            session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < before))

    def confirm_deleted(self, vmid: int) -> bool:
        """DELETING → DELETED once the VM is gone from Proxmox and no delete is running."""
        with self.db.write() as session:
            instance = session.get(Instance, vmid)
            if instance is None or instance.lifecycle != Lifecycle.DELETING:
                return False
            if session.scalar(_open_jobs(vmid).where(Job.state == JobState.RUNNING).limit(1)) is not None:
                return False
            self._supersede(session, vmid, "the VM is gone")
            _deleted(instance)
            return True

    def adopt(self, row: dict[str, Any]) -> bool:
        """An instance for a VM of ours the store does not know (after data loss); False if it appeared meanwhile."""
        with self.db.write() as session:
            if session.get(Instance, row["id"]) is not None:
                return False
            session.add(Instance(**row, lifecycle=Lifecycle.PROVISIONED, adopted=True))
            return True

    # ------------------------------------------------------------ helpers

    def _supersede(self, session: Session, vmid: int, reason: str) -> None:
        for job in session.scalars(select(Job).where(Job.instance_id == vmid, Job.state == JobState.PENDING)):
            self._end(session, job, JobState.CANCELED, reason)

    def _cancel_pending(self, session: Session, job: Job, reason: str) -> None:
        self._end(session, job, JobState.CANCELED, reason)
        instance = session.get(Instance, job.instance_id)
        if instance is not None:
            apply_outcome(job, instance, HostOutcome(ok=False, error=reason))

    @staticmethod
    def _end(_session: Session, job: Job, state: JobState, error: str) -> None:
        job.state, job.error, job.finished_at, job.run_pgid = state, error, utcnow(), None


def _enqueue(session: Session, vmid: int, kind: JobKind, params: dict[str, Any], max_attempts: int = 1) -> Job:
    job = Job(
        id=str(uuid.uuid4()),
        kind=kind,
        instance_id=vmid,
        params=params,
        state=JobState.PENDING,
        max_attempts=max_attempts,
    )
    session.add(job)
    session.flush()
    return job


def _instance(
    session: Session,
    vmid: int | None,
    gone: tuple[Lifecycle, ...] = (Lifecycle.DELETED, Lifecycle.DELETING),
    lock: bool = False,
    owner: str | None = None,
) -> Instance:
    query = select(Instance).where(Instance.id == vmid)
    instance = session.scalar(query.with_for_update() if lock else query) if vmid is not None else None
    if instance is None or instance.lifecycle in gone or (owner is not None and instance.owner != owner):
        raise NotFound(f"instance {vmid!r} does not exist")
    return instance


def _open_jobs(vmid: int) -> Select[Job]:
    return select(Job).where(Job.instance_id == vmid, Job.state.in_(OPEN))


def _deleted(instance: Instance) -> None:
    instance.lifecycle = Lifecycle.DELETED
    instance.deleted_at = utcnow()
    instance.address = None


def _free_slots(session: Session, lost_before: datetime) -> int:
    """The runs the live workers that are not draining could start now: their slots less the runs claimed and not
    finished (a run a queue holds for a worker counts as soon as it is claimed)."""
    serving = (Worker.heartbeat_at >= lost_before, Worker.draining.is_(False))
    slots = session.scalar(select(func.coalesce(func.sum(Worker.slots), 0)).where(*serving))
    busy = session.scalar(
        select(func.count(distinct(Job.run_id)))
        .join(Worker, Worker.id == Job.worker_id)
        .where(Job.state == JobState.RUNNING, *serving)
    )
    return max(0, int(slots or 0) - int(busy or 0))


def _due(job: Job, now: datetime) -> bool:
    return job.not_before is None or aware(job.not_before) <= now


def aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they were stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
