"""Start-up configuration: refusing to run without a token, the dev tokens, reference variable names."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from common.db import make_engine
from engine.settings import REFERENCE, Settings
from provisioner import cli
from tests.conftest import OPERATOR_TOKEN, TOKEN

TOKENS = {REFERENCE + "SERVER_AUTH_TOKEN": TOKEN, "PROVISIONER_OPERATOR_TOKEN": OPERATOR_TOKEN}


def test_refuses_to_start_without_a_token_unless_explicitly_insecure(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("VISA_WEB_PROVIDER_PROXMOX_SERVER_AUTH_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="refusing to serve without authentication"):
        Settings()
    assert Settings(insecure_no_auth=True).auth_token is None


def test_the_operator_api_needs_its_own_token(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PROVISIONER_OPERATOR_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="PROVISIONER_OPERATOR_TOKEN is not set"):
        Settings(auth_token=TOKEN)
    with pytest.raises(ValidationError, match="must differ"):
        Settings(auth_token=TOKEN, operator_token=TOKEN)
    assert Settings(auth_token=TOKEN, operator_api=False).operator_token is None
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


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg"])
def test_a_postgresql_url_uses_psycopg_and_never_shows_its_password(scheme: str):
    engine = make_engine(f"{scheme}://provisioner:db-password@127.0.0.1:1/provisioner")  # no connection is made
    try:
        assert engine.dialect.driver == "psycopg"  # psycopg2, SQLAlchemy's default, is not a dependency
        assert "db-password" not in repr(engine) + str(engine.url)
    finally:
        engine.dispose()
