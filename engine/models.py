"""Persistent state: instances, jobs, job events, workers, duties, flavours, API tokens, the audit log (SQLAlchemy 2
ORM)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine


def utcnow() -> datetime:
    return datetime.now(UTC)


class StoredText(TypeDecorator[str]):
    """Text from Ansible, Proxmox or a guest, as every database can store it: NUL characters dropped, and cut to the
    column's length if it has one. PostgreSQL refuses both (a NUL in text, a value longer than its VARCHAR) where
    SQLite keeps them, and a refused row would fail the whole transition (a job's finish, a run's events)."""

    impl: TypeEngine[Any] | type[TypeEngine[Any]] = Text
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.impl = String(length) if length else Text()
        self.length = length

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        value = value.replace("\x00", "")
        return value[: self.length] if self.length else value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[str]: JSON,
        datetime: DateTime(timezone=True),
    }


VISA_OWNER = "visa"


class Lifecycle(enum.StrEnum):
    """Where an instance is in *our* lifecycle; the power state comes from Proxmox."""

    BUILDING = "building"  # create job accepted, not finished
    PROVISIONED = "provisioned"  # create job succeeded; Proxmox is the truth from now on
    ERROR = "error"  # create failed (fault recorded)
    DELETING = "deleting"  # delete accepted; VISA already considers it gone
    DELETED = "deleted"  # gone from Proxmox; seed released


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"  # ran, with failures
    CANCELED = "canceled"
    ERROR = "error"  # could not run at all

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


class JobKind(enum.StrEnum):
    CREATE = "create"
    DELETE = "delete"
    START = "start"
    SHUTDOWN = "shutdown"
    STOP = "stop"
    REBOOT = "reboot"
    FIREWALL = "firewall"
    REGISTER = "register"  # the VM in the discovery registry, when the create could not register it
    KEYS = "keys"  # the user's authorized keys in a running guest, over SSH


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # the Proxmox VMID
    name: Mapped[str] = mapped_column(String(255))  # as the client sent it (VISA compares it)
    vm_name: Mapped[str] = mapped_column(String(63))  # the DNS-safe Proxmox name
    image_id: Mapped[str] = mapped_column(String(32))
    flavour_id: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(64))
    cores: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    lifecycle: Mapped[str] = mapped_column(String(16), default=Lifecycle.BUILDING, index=True)
    address: Mapped[str | None] = mapped_column(StoredText(64), default=None)
    boot_command: Mapped[str | None] = mapped_column(Text, default=None)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    security_groups: Mapped[list[str]] = mapped_column(default=list)
    ssh_keys: Mapped[list[str]] = mapped_column(default=list)  # what the guest's user must have: the seed's too
    # Keys removed through the API: every key change makes them absent from the guest (a key added back leaves).
    ssh_keys_removed: Mapped[list[str]] = mapped_column(default=list)
    # The last key change found the VM stopped: its next start applies the keys (cloud-init adds keys only once).
    ssh_keys_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    # The seed token's digest and the nonce it is derived from (engine/seeds.py); the clear token only on rows an
    # older release stored.
    seed_token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    seed_nonce: Mapped[str | None] = mapped_column(String(32), default=None)
    seed_token: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    fault_message: Mapped[str | None] = mapped_column(StoredText(), default=None)
    fault_details: Mapped[str | None] = mapped_column(StoredText(), default=None)
    fault_at: Mapped[datetime | None] = mapped_column(default=None)
    phoned_home_at: Mapped[datetime | None] = mapped_column(default=None)
    host_key: Mapped[str | None] = mapped_column(StoredText(), default=None)
    adopted: Mapped[bool] = mapped_column(Boolean, default=False)
    # Who may see and change it: VISA_OWNER for VISA's (and adopted) instances, else the API token's name.
    owner: Mapped[str] = mapped_column(String(64), default=VISA_OWNER, server_default=VISA_OWNER, index=True)
    login_user: Mapped[str | None] = mapped_column(String(32), default=None)  # cloud-init's user; None: the site's
    expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)  # its lease: deleted then
    # Up, but the discovery registry did not take it yet: the reconciler registers it (a register job).
    registration_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    delete_requested_at: Mapped[datetime | None] = mapped_column(default=None)  # the first delete, for its timeout
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # never holds secrets
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING)
    run_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    run_pgid: Mapped[int | None] = mapped_column(Integer, default=None)  # the run's ansible-playbook process group
    worker_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)  # the worker running it
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    not_before: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(StoredText(), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    counter: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(StoredText(64))
    task: Mapped[str | None] = mapped_column(StoredText(255), default=None)
    changed: Mapped[bool] = mapped_column(Boolean, default=False)
    stdout: Mapped[str] = mapped_column(StoredText(), default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A worker process (`provisioner worker`): it claims and runs jobs, and beats while it lives."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    slots: Mapped[int] = mapped_column(Integer, default=1)  # playbook runs it may run at once
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    draining: Mapped[bool] = mapped_column(Boolean, default=False)  # finishing its runs; claims nothing new


class Duty(Base):
    """A duty one process holds for all (the reconciler, the advertiser): a lease it renews while it lives."""

    __tablename__ = "duties"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column()


class Flavour(Base):
    __tablename__ = "flavours"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    cpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    full_clone: Mapped[bool | None] = mapped_column(Boolean, default=None)


class TokenRole(enum.StrEnum):
    ADMIN = "admin"  # sees and manages everything, flavours, the audit log
    OPERATOR = "operator"  # creates and manages its own VMs
    VIEWER = "viewer"  # reads


class ApiToken(Base):
    """A /v1 API token: the store keeps its digest only (the token is shown once, when it is made)."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    max_vms: Mapped[int | None] = mapped_column(Integer, default=None)
    max_vcpus: Mapped[int | None] = mapped_column(Integer, default=None)
    max_memory_mb: Mapped[int | None] = mapped_column(Integer, default=None)
    max_disk_gb: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """One action someone took: appended, never changed."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)  # a token's name, "visa", or "cli:<user>"
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(StoredText(128), default=None, index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # secrets removed
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status answered (the CLI's: 200 or 4xx alike)
    client: Mapped[str | None] = mapped_column(StoredText(64), default=None)  # the client's address


class IdempotencyKey(Base):
    """A create sent with an Idempotency-Key: the same key and body answer the same VM again (kept at least 24 h)."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Forward(Base):
    """The port on the Golem listener's address that forwards to a Golem VM's SSH (api/golem/forwarder.py)."""

    __tablename__ = "forwards"

    port: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
