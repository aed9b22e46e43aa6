"""Playbooks run in worker processes: the API process never loads ansible-runner, `provisioner run` keeps its
workers (started, restarted when one dies, stopped with it), and a standalone worker says what it lacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.store import Store
from tests.conftest import ROOT, LiveService, start_service, wait_for


def test_the_api_process_never_imports_ansible_runner():
    probe = (
        "import sys, provisioner.runtime, provisioner.cli, web_provider.http, api.operator;"
        "loaded = sorted(m for m in sys.modules if m.startswith(('ansible_runner', 'engine.jobs.runner',"
        " 'engine.jobs.executor', 'engine.jobs.worker')));"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def two_workers(tmp_path: Path, simulator: Any) -> Any:
    service = start_service(tmp_path, simulator, workers=2)
    yield service
    service.stop()


def worker_rows(service: LiveService) -> dict[int, str]:
    return {w.pid: w.id for w in Store(service.runtime.db).workers()}


def test_the_service_keeps_its_workers_and_replaces_one_that_dies(two_workers: LiveService):
    runtime = two_workers.runtime
    assert runtime.workers is not None
    wait_for(lambda: len(worker_rows(two_workers)) == 2, timeout=60, what="two workers to join")
    first = set(worker_rows(two_workers))
    assert first == set(runtime.workers.pids)
    listed = two_workers.operator.get("/v1/workers").json()
    assert {w["pid"] for w in listed} == first and all(w["running_jobs"] == 0 and not w["draining"] for w in listed)
    victim = sorted(first)[0]
    os.kill(victim, signal.SIGKILL)
    # Another process takes its place, and the dead one's row goes (its process is gone from this host).
    wait_for(
        lambda: len(worker_rows(two_workers)) == 2 and victim not in worker_rows(two_workers),
        timeout=60,
        what="the dead worker to be replaced",
    )
    runtime.workers.stop()
    assert worker_rows(two_workers) == {}  # stopped workers leave


def test_a_standalone_worker_refuses_to_start_without_what_it_needs(tmp_path: Path):
    env = {
        **os.environ,
        "PROVISIONER_STATE_DIR": str(tmp_path),
        "PROVISIONER_INSECURE_NO_AUTH": "true",
        "PROVISIONER_DISCOVERY": "false",
    }
    result = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "worker"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "needs the Proxmox endpoint" in result.stderr
    env |= {
        "VISA_WEB_PROVIDER_PROXMOX_ENDPOINT": "https://127.0.0.1:8006/api2/json/",
        "VISA_WEB_PROVIDER_PROXMOX_USER": "root@pam!provisioner",
        "VISA_WEB_PROVIDER_PROXMOX_PASSWORD": "a-token-secret-value",
    }
    result = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "worker"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "no seed key" in result.stderr
    assert "a-token-secret-value" not in result.stderr + result.stdout
