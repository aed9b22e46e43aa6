"""Rows in a migrated store, and an executor and a worker over it, for the store, executor, worker, reconciler and
recovery tests."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

from engine import models
from engine.db import Database
from engine.jobs.executor import Executor, ExecutorConfig
from engine.jobs.kinds import Context
from engine.jobs.worker import Worker, WorkerConfig
from engine.models import Instance, Job, JobKind, JobState, Lifecycle, utcnow
from engine.seeds import SeedTokens
from engine.settings import Settings
from engine.store import Store


def make_executor(
    db: Database,
    tmp_path: Path,
    max_batch: int = 50,
    window: float = 0.0,
    parallel_runs: int = 1,
    worker_id: str | None = None,
) -> Executor:
    config = ExecutorConfig(
        ansible_dir=tmp_path,
        runs_dir=tmp_path / "runs",
        max_batch=max_batch,
        max_parallel_runs=parallel_runs,
        batch_window_s=window,
        job_timeout_s=60,
        keep_runs=5,
    )
    settings = Settings(insecure_no_auth=True, state_dir=tmp_path)  # type: ignore[call-arg]
    context = Context(settings, SeedTokens(b"k" * 32))
    return Executor(Store(db), config, env={}, secrets=[], context=context, after_run=lambda: None, worker_id=worker_id)


def make_worker(db: Database, tmp_path: Path, host: str = "here", lost_after_s: float = 30) -> Worker:
    """A worker (not started) on `host`, whose executor runs no playbook."""
    config = WorkerConfig(tmp_path / "bell", tmp_path / "runs", heartbeat_s=0.2, lost_after_s=lost_after_s)
    return Worker(
        Store(db), lambda worker_id, _after: make_executor(db, tmp_path, worker_id=worker_id), config, host=host
    )


def add_worker(db: Database, worker_id: str, host: str, pid: int, silent_s: float = 0) -> None:
    """A worker's row, as one that last beat silent_s ago wrote it."""
    Store(db).register_worker(worker_id, host, pid)
    with db.session() as session:
        session.get_one(models.Worker, worker_id).heartbeat_at = utcnow() - timedelta(seconds=silent_s)


def add_instance(db: Database, vmid: int) -> None:
    with db.session() as session:
        session.add(
            Instance(
                id=vmid,
                name=f"n{vmid}",
                vm_name=f"n{vmid}",
                image_id="9000",
                flavour_id="small",
                node="pve1",
                cores=1,
                memory_mb=512,
                disk_gb=4,
                lifecycle=Lifecycle.BUILDING,
                seed_token_hash=uuid.uuid4().hex,
            )
        )


def provisioned(db: Database, vmid: int, lifecycle: Lifecycle = Lifecycle.PROVISIONED) -> None:
    add_instance(db, vmid)
    with db.session() as session:
        session.get_one(Instance, vmid).lifecycle = lifecycle


def add_job(
    db: Database,
    vmid: int,
    kind: JobKind,
    state: JobState = JobState.PENDING,
    age_s: float = 10,
    worker_id: str | None = None,
) -> str:
    job_id = str(uuid.uuid4())
    created = utcnow() - timedelta(seconds=age_s)
    with db.session() as session:
        session.add(Job(id=job_id, kind=kind, instance_id=vmid, state=state, created_at=created, worker_id=worker_id))
    time.sleep(0.002)  # distinct creation order
    return job_id


def asks_for_write_lock(statement: str) -> bool:
    """The statement a write transaction starts with (common.db.make_engine): SQLite's BEGIN (IMMEDIATE), PostgreSQL's
    advisory lock."""
    return statement.startswith("BEGIN") or "pg_advisory_xact_lock" in statement
