"""`provisioner` as a process: bad configuration stops it with a clear message, the flavour commands, a configured
Proxmox endpoint, `run --local-postgres` (the settings themselves: tests/unit/test_configuration.py)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from engine.models import Flavour
from engine.settings import REFERENCE
from provisioner.postgres import LocalPostgres, local_postgres_dir
from tests.conftest import ROOT, wait_for
from tests.helpers.postgres import require_postgres

CLEAN = {"PATH": "/usr/bin:/bin"}
VISA_TOKEN = "site-token-0123456789"
OPERATOR_TOKEN = "operator-token-0123456789"
TOKENS = {REFERENCE + "SERVER_AUTH_TOKEN": VISA_TOKEN, "PROVISIONER_OPERATOR_TOKEN": OPERATOR_TOKEN}


def run_service(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`provisioner run` with only these variables, expected to stop at its configuration."""
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "run"],
        env={**CLEAN, "PROVISIONER_STATE_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def spawn_run(env: dict[str, str], *options: str) -> subprocess.Popen[str]:
    """`provisioner run` as a process, its output (stdout and stderr) in one pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "provisioner.cli", "run", *options],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def answered(port: int, path: str, timeout: float, what: str) -> Any:
    """The JSON of VISA's GET `path` on 127.0.0.1:`port`, once the service answers it with 200."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-Auth-Token": VISA_TOKEN}) as client:

        def answer() -> Any:
            try:
                response = client.get(path)
            except httpx.HTTPError:
                return None
            return response.json() if response.status_code == 200 else None

        return wait_for(answer, timeout=timeout, what=what)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROVISIONER_SSH_PUBLIC_KEYS": "ssh-ed25519 garbage"}, "configured SSH key #1"),
        ({"PROVISIONER_FLAVOURS_FILE": "/nonexistent/flavours.yml"}, "cannot read flavour file"),
        ({"VISA_WEB_PROVIDER_PROXMOX_ENDPOINT": "pve:8006"}, "must be a URL"),
    ],
)
def test_bad_configuration_stops_the_service_with_a_clear_message(tmp_path: Path, env: dict[str, str], message: str):
    result = run_service(tmp_path, {**TOKENS, **env})
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (REFERENCE + "SERVER_AUTH_TOKEN", "s3cr3t-short", "at least 16 characters"),
        (REFERENCE + "SERVER_AUTH_TOKEN", "s3cr3t with-a-space-0123", "visible ASCII characters only"),
        ("PROVISIONER_OPERATOR_TOKEN", "s3cr3t-0123456789\n", "visible ASCII characters only"),
        ("PROVISIONER_OPERATOR_TOKEN", "s3cr3t-op", "at least 16 characters"),
        ("PROVISIONER_OPERATOR_TOKEN", VISA_TOKEN, "must differ from"),
        ("DISCOVERY_READ_TOKEN", "s3cr3t-read", "at least 16 characters"),
        ("DISCOVERY_READ_TOKEN", "s3cr3t\treading-0123456", "visible ASCII characters only"),
    ],
)
def test_a_bad_token_stops_the_service_naming_the_variable_never_the_value(
    tmp_path: Path, variable: str, value: str, message: str
):
    result = run_service(tmp_path, {**TOKENS, variable: value})
    assert result.returncode == 2
    assert variable in result.stderr and message in result.stderr
    assert value.strip() not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_flavour_cli_sets_lists_imports_and_deletes(tmp_path: Path):
    env = {**CLEAN, "PROVISIONER_STATE_DIR": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "provisioner.cli", "flavours", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    done = cli(
        "set", "gpu", "--name", "GPU node", "--cpus", "8", "--ram-mb", "65536", "--disk-gb", "100", "--linked-clone"
    )
    assert done.returncode == 0, done.stderr
    assert "gpu" in done.stdout and "65536 MB" in done.stdout and "linked" in done.stdout
    bad = cli("set", "bad", "--name", "x", "--cpus", "0", "--ram-mb", "1024", "--disk-gb", "1")
    assert bad.returncode != 0 and "cpus" in bad.stderr
    shipped = ROOT / "engine" / "defaults" / "flavours.yml"
    listed = cli("import", str(shipped)).stdout
    assert "small" in listed and "gpu" in listed
    assert "gpu" not in cli("delete", "gpu").stdout
    assert cli("delete", "gpu").returncode != 0
    assert "small" in cli("list").stdout


def test_the_service_uses_a_configured_proxmox_endpoint(tmp_path: Path, simulator):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **CLEAN,
        "PROVISIONER_STATE_DIR": str(tmp_path),
        **TOKENS,
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_PORT": str(port),
        "VISA_WEB_PROVIDER_PROXMOX_ENDPOINT": f"https://{simulator.host}:{simulator.port}/api2/json/",
        "VISA_WEB_PROVIDER_PROXMOX_USER": simulator.token_id,
        "VISA_WEB_PROVIDER_PROXMOX_PASSWORD": simulator.token_secret,
        "PROVISIONER_PROXMOX_CA_FILE": str(simulator.cafile),
        "DISCOVERY_PORT": "0",  # the embedded registry on a free port, not the default another service may hold
    }
    service = spawn_run(env)
    try:
        images = answered(port, "/api/images", timeout=60, what="the service")
        assert {i["id"] for i in images} == {"9000", "9001"}
        assert not (tmp_path / "simulator").exists(), "no embedded simulator when an endpoint is configured"
    finally:
        service.terminate()
        output = service.communicate(timeout=30)[0]
    assert simulator.token_secret not in output
    assert VISA_TOKEN not in output and OPERATOR_TOKEN not in output


def test_run_local_postgres_serves_on_a_cluster_of_its_own_and_stops_it_at_exit():
    """`make run-postgres`: the first run makes the cluster and both databases, the next one starts the same cluster
    (the flavours stored by the first are there); each stops PostgreSQL when the service stops, and never prints the
    database password."""
    require_postgres()
    # As root the server runs as an unprivileged user, who must reach the cluster beside the state directory.
    base = Path(tempfile.mkdtemp(prefix="provisioner-run-postgres-"))
    base.chmod(0o711)
    state = base / "state"

    def port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def run_once() -> tuple[str, int]:
        service_port = port()
        env = {
            **CLEAN,
            **TOKENS,
            "PROVISIONER_STATE_DIR": str(state),
            "VISA_WEB_PROVIDER_PROXMOX_SERVER_PORT": str(service_port),
            "PROVISIONER_SIM_PORT": str(port()),
            "PROVISIONER_SIM_TIME_SCALE": "0",
            "DISCOVERY_PORT": "0",
        }
        service = spawn_run(env, "--local-postgres")
        try:
            assert answered(service_port, "/api/flavours", timeout=90, what="the service on PostgreSQL")
        finally:
            service.send_signal(signal.SIGTERM)
            output = service.communicate(timeout=60)[0]
        return output, service.returncode

    try:
        first, code = run_once()
        assert "PostgreSQL: 127.0.0.1:" in first and ", started (cluster in" in first, first
        password = (state / "postgres-password").read_text().strip()
        assert password not in first
        assert "PostgreSQL: stopping" in first and code == 128 + signal.SIGTERM, first
        cluster = LocalPostgres(local_postgres_dir(state), password)
        assert cluster.running_port() is None, "stopped with the service"

        second, _ = run_once()
        assert ", started (cluster in" in second and "PostgreSQL: stopping" in second, second
        assert cluster.running_port() is None
        cluster.start()
        try:
            engine = create_engine(cluster.url("provisioner"))
            with engine.connect() as connection:
                assert connection.scalar(select(func.count()).select_from(Flavour)), "the flavours in PostgreSQL"
            engine.dispose()
            assert {"provisioner", "discovery"} <= cluster.databases()
        finally:
            cluster.stop(mode="immediate")
    finally:
        shutil.rmtree(base, ignore_errors=True)
