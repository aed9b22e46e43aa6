"""After a worker's crash: its run's playbook processes are killed before its jobs run again, its inputs removed; a
run stuck past its timeout is killed and failed; pruning never touches a run that is going, on any worker."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from engine.db import Database
from engine.jobs.runner import allowed_environment
from engine.models import Job, JobKind, JobState, utcnow
from tests.helpers.store import add_instance, add_job, add_worker, make_executor, make_worker


def fake_playbook(run_id: str) -> subprocess.Popen[bytes]:
    """A process in a session of its own whose command line names the run, as ansible-playbook's does."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", f"/runs/{run_id}/inventory"], start_new_session=True
    )


def running_job(
    db: Database, vmid: int, run_id: str, pgid: int | None, started_ago_s: float = 0, worker_id: str | None = None
) -> str:
    add_instance(db, vmid)
    job_id = add_job(db, vmid, JobKind.CREATE)
    with db.session() as session:
        job = session.get_one(Job, job_id)
        job.state, job.run_id, job.run_pgid, job.worker_id = JobState.RUNNING, run_id, pgid, worker_id
        job.started_at = utcnow() - timedelta(seconds=started_ago_s)
    return job_id


def gone(process: subprocess.Popen[bytes]) -> bool:
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return True


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_recovery_kills_the_lost_workers_playbook_then_requeues_and_removes_its_inventory(db: Database, tmp_path: Path):
    playbook = fake_playbook("run-a")
    add_worker(db, "crashed", "here", dead_pid())
    job_id = running_job(db, 1, "run-a", playbook.pid, worker_id="crashed")
    inventory = tmp_path / "runs" / "run-a" / "inventory"
    inventory.mkdir(parents=True)
    (inventory / "hosts.json").write_text('{"vm_seed_url": "http://x/seed/token/"}')
    try:
        assert make_worker(db, tmp_path, host="here").recover_lost() == 1
        assert gone(playbook)
        assert not inventory.exists() and (tmp_path / "runs" / "run-a").is_dir()
        with db.session() as session:
            job = session.get_one(Job, job_id)
            assert (job.state, job.run_id, job.run_pgid) == (JobState.PENDING, None, None)
    finally:
        playbook.kill()


def test_a_recorded_group_that_is_not_the_runs_is_left_alone(db: Database, tmp_path: Path):
    stranger = fake_playbook("another-run")  # the number was reused by something else
    running_job(db, 1, "run-a", stranger.pid)
    try:
        assert make_worker(db, tmp_path).recover_lost() == 1
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_run_past_its_timeout_is_killed_and_its_jobs_fail(db: Database, tmp_path: Path):
    playbook = fake_playbook("run-old")
    old = running_job(db, 1, "run-old", playbook.pid, started_ago_s=3600)
    young = running_job(db, 2, "run-new", None, started_ago_s=1)
    try:
        make_executor(db, tmp_path)._give_up_overdue_runs()  # job timeout 60 s + grace
        assert gone(playbook)
        with db.session() as session:
            assert session.get_one(Job, old).state == JobState.ERROR
            assert "did not end within 60 s" in (session.get_one(Job, old).error or "")
            assert session.get_one(Job, young).state == JobState.RUNNING
    finally:
        playbook.kill()


def test_pruning_with_keep_runs_0_spares_the_runs_that_are_going(db: Database, tmp_path: Path):
    executor = make_executor(db, tmp_path)
    runs = tmp_path / "runs"
    for name in ("finished", "going", "going-elsewhere"):
        (runs / name).mkdir(parents=True)
    running_job(db, 1, "going-elsewhere", None, worker_id="another-worker")
    executor._config = dataclasses.replace(executor._config, keep_runs=0)
    executor._cancels["going"] = threading.Event()
    executor._prune_runs()
    assert sorted(p.name for p in runs.iterdir()) == ["going", "going-elsewhere"]


def test_the_playbook_environment_keeps_only_what_it_needs(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN", "visa-secret-token-value")
    monkeypatch.setenv("PROVISIONER_DATABASE_URL", "postgresql://u:db-password@h/db")
    monkeypatch.setenv("LANG", "C.UTF-8")
    prepared = dict(os.environ) | {"ANSIBLE_CALLBACK_PLUGINS": "/runner/callbacks", "PROXMOX_PASSWORD": "pw"}
    env = allowed_environment(prepared, {"PROXMOX_PASSWORD": "pw", "PATH": "/venv/bin:/usr/bin"})
    assert "VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN" not in env and "PROVISIONER_DATABASE_URL" not in env
    assert env["LANG"] == "C.UTF-8" and env["ANSIBLE_CALLBACK_PLUGINS"] == "/runner/callbacks"
    assert env["PROXMOX_PASSWORD"] == "pw"
