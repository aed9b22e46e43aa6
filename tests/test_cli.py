"""Start-up configuration: refusing to run without a token, reference variable names, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.settings import REFERENCE, Settings
from provisioner import cli

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
        cwd=Path(__file__).parents[1],
    )


def test_refuses_to_start_without_a_token_unless_explicitly_insecure(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="refusing to serve without authentication"):
        Settings()
    assert Settings(insecure_no_auth=True).auth_token is None


def test_the_operator_api_needs_its_own_token(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PROVISIONER_OPERATOR_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="PROVISIONER_OPERATOR_TOKEN is not set"):
        Settings(auth_token=VISA_TOKEN)
    with pytest.raises(ValidationError, match="must differ"):
        Settings(auth_token=VISA_TOKEN, operator_token=VISA_TOKEN)
    assert Settings(auth_token=VISA_TOKEN, operator_api=False).operator_token is None
    assert Settings(insecure_no_auth=True).operator_token is None


def test_dev_tokens_are_made_once_distinct_private_and_only_where_the_environment_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path))
    for variable in TOKENS:
        monkeypatch.delenv(variable, raising=False)
    made = cli._dev_tokens()
    settings = cli._settings(made)
    assert settings.auth_token and settings.operator_token and settings.auth_token != settings.operator_token
    for name, secret in (("auth-token", settings.auth_token), ("operator-token", settings.operator_token)):
        assert (tmp_path / name).read_text(encoding="utf-8").strip() == secret.get_secret_value()
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert cli._dev_tokens() == made
    monkeypatch.setenv("PROVISIONER_OPERATOR_TOKEN", OPERATOR_TOKEN)
    made = cli._dev_tokens()
    assert set(made) == {"auth_token"}
    cli._announce_credentials(cli._settings(made), made)
    printed = capsys.readouterr().out
    assert f"X-Auth-Token: {made['auth_token']}" in printed
    assert OPERATOR_TOKEN not in printed and "Bearer): <from the environment>" in printed


def test_reference_variable_names_are_honoured(monkeypatch: pytest.MonkeyPatch):
    env = {
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_PORT": "4100",
        "VISA_WEB_PROVIDER_PROXMOX_SERVER_HOST": "0.0.0.0",
        **TOKENS,
        "VISA_WEB_PROVIDER_PROXMOX_ENDPOINT": "https://pve.example.org:8006/api2/json/",
        "VISA_WEB_PROVIDER_PROXMOX_USER": "root@pam!visa",
        "VISA_WEB_PROVIDER_PROXMOX_PASSWORD": "0b6b5c4e-5f6a-4c1d-9e2f-3a4b5c6d7e8f",
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
        **TOKENS,
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
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-Auth-Token": VISA_TOKEN})

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
    assert VISA_TOKEN not in output and OPERATOR_TOKEN not in output
