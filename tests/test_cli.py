"""Start-up configuration: refusing to run without a token, reference variable names, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.settings import Settings

CLEAN = {"PATH": "/usr/bin:/bin"}


def test_refuses_to_start_without_a_token_unless_explicitly_insecure(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="refusing to serve without authentication"):
        Settings()
    assert Settings(insecure_no_auth=True).auth_token is None


def test_reference_variable_names_are_honoured(monkeypatch: pytest.MonkeyPatch):
    env = {
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_PORT": "4100",
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_HOST": "0.0.0.0",
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN": "site-token-123",
        "VISA_WEB_PROVIDER_PROXMOX_ENDPOINT": "https://pve.example.org:8006/api2/json/",
        "VISA_WEB_PROVIDER_PROXMOX_USER": "root@pam!visa",
        "VISA_WEB_PROVIDER_PROXMOX_PASSWORD": "tok",
        "VISA_WEB_PROVIDER_PROXMOX_TIMEOUT": "30000",
        "VISA_WEB_PROVIDER_PROXMOX_SELECT_COEFF": "1",
        "VISA_WEB_PROVIDER_PROXMOX_METADATA_SERVER": "http://10.0.0.1:4001/ci",
        "VISA_WEB_PROVIDER_PROXMOX_PROJECT_ID": "p",
        "VISA_CLOUD_SERVER_NAME_PREFIX": "VISA_INSTANCE",
        "VISA_CLOUD_SERVER_MAX_START_RETRY": "3",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert (settings.server_port, settings.server_host) == (4100, "0.0.0.0")
    assert settings.proxmox_host == "pve.example.org" and settings.proxmox_port == 8006
    assert settings.uses_token and settings.proxmox_timeout_ms == 30000 and settings.select_coeff == 1
    assert settings.seed_base_url == "http://10.0.0.1:4001/ci/" and settings.seed_path_prefix == "/ci"
    assert settings.server_name_prefix == "VISA_INSTANCE" and settings.max_start_retry == 3
    assert not settings.simulated


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PROVISIONER_SSH_PUBLIC_KEYS": "ssh-ed25519 garbage"}, "configured SSH key #1"),
        ({"PROVISIONER_FLAVOURS_FILE": "/nonexistent/flavours.yml"}, "cannot read flavour file"),
        ({"VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN": "short"}, "at least 8 characters"),
        ({"VISA_WEB_PROVIDER_PROXMOX_ENDPOINT": "pve:8006"}, "must be a URL"),
    ],
)
def test_bad_configuration_stops_the_service_with_a_clear_message(tmp_path: Path, env: dict[str, str], message: str):
    full = {
        **CLEAN,
        "PROVISIONER_STATE_DIR": str(tmp_path),
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN": "tok-12345678",
    }
    full.update(env)
    result = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", "run"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 2
    assert message in result.stderr
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
            cwd=Path(__file__).parents[1],
        )

    done = cli(
        "set", "gpu", "--name", "GPU node", "--cpus", "8", "--ram-mb", "65536", "--disk-gb", "100", "--linked-clone"
    )
    assert done.returncode == 0, done.stderr
    assert "gpu" in done.stdout and "65536 MB" in done.stdout and "linked" in done.stdout
    bad = cli("set", "bad", "--name", "x", "--cpus", "0", "--ram-mb", "1024", "--disk-gb", "1")
    assert bad.returncode != 0 and "cpus" in bad.stderr
    shipped = Path(__file__).parents[1] / "engine" / "defaults" / "flavours.yml"
    listed = cli("import", str(shipped)).stdout
    assert "small" in listed and "gpu" in listed
    assert "gpu" not in cli("delete", "gpu").stdout
    assert cli("delete", "gpu").returncode != 0
    assert "small" in cli("list").stdout


def test_the_service_uses_a_configured_proxmox_endpoint(tmp_path: Path, simulator):
    import socket

    import httpx

    from tests.conftest import wait_for

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **CLEAN,
        "PROVISIONER_STATE_DIR": str(tmp_path),
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN": "site-token-123",
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_PORT": str(port),
        "VISA_WEB_PROVIDER_PROXMOX_ENDPOINT": f"https://{simulator.host}:{simulator.port}/api2/json/",
        "VISA_WEB_PROVIDER_PROXMOX_USER": simulator.token_id,
        "VISA_WEB_PROVIDER_PROXMOX_PASSWORD": simulator.token_secret,
        "PROVISIONER_PROXMOX_CA_FILE": str(simulator.cafile),
    }
    service = subprocess.Popen(
        [sys.executable, "-m", "provisioner.cli", "run"],
        env=env,
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-Auth-Token": "site-token-123"})

        def images() -> list | None:
            try:
                response = client.get("/api/images")
            except httpx.HTTPError:
                return None
            return response.json() if response.status_code == 200 else None

        assert {i["id"] for i in wait_for(images, timeout=60, what="the service")} == {"9000", "9001"}
        assert not (tmp_path / "simulator").exists(), "no embedded simulator when an endpoint is configured"
    finally:
        service.terminate()
        output = service.communicate(timeout=30)[0]
    assert simulator.token_secret not in output
    assert "site-token-123" not in output
