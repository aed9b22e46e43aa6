"""The discovery registry in the running service (`make run`): embedded by default and configured by the
DISCOVERY_* variables, or external with DISCOVERY_URL; the provider key; the advertisement; the playbooks' env."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from discovery import signing
from discovery.client import ProviderAuth
from tests.conftest import start_service, start_test_registry, wait_for

HOST = {"name": "VISA-INSTANCE-1", "address": "10.0.3.17", "groups": ["visa"]}


def advertised(url: str, provider_id: str) -> dict[str, Any] | None:
    answer = httpx.get(f"{url}/api/v1/advertisements/{provider_id}")
    return answer.json() if answer.status_code == 200 else None


def register(url: str, key: Ed25519PrivateKey) -> httpx.Response:
    return httpx.post(f"{url}/api/v1/hosts", json=HOST, auth=ProviderAuth(key))


def test_the_embedded_registry_honours_the_discovery_variables_and_the_service_advertises(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    partner = Ed25519PrivateKey.generate()
    trusted = f"{signing.provider_id(partner)},{signing.provider_id(Ed25519PrivateKey.generate())}"
    for name, value in {
        "DISCOVERY_HOST": "127.0.0.1",
        "DISCOVERY_PORT": "0",
        "DISCOVERY_RATE_LIMIT_PER_MINUTE": "1000",
        "DISCOVERY_ADVERTISEMENT_TTL_SECONDS": "120",
        "DISCOVERY_CLEANUP_INTERVAL_SECONDS": "30",
        "DISCOVERY_READ_TOKEN": "embedded-read-token-0123",
        "DISCOVERY_ALLOWED_PROVIDERS": signing.provider_id(partner),
        "DISCOVERY_TRUSTED_PROVIDERS": trusted,
    }.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.INFO):
        live = start_service(tmp_path, simulator, discovery_enabled=True, provider_country="de")
    try:
        registry = live.runtime.registry
        assert registry is not None
        settings = registry.server.config.app.state.registry.settings
        assert (settings.rate_limit_per_minute, settings.advertisement_ttl_s, settings.cleanup_interval_s) == (
            1000,
            120,
            30,
        )
        assert settings.db_url == f"sqlite:///{tmp_path / 'discovery.db'}"
        assert httpx.get(f"{registry.url}/api/v1/hosts").status_code == 401  # the read token applies

        key_file = tmp_path / "discovery-provider.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        provider_id = signing.provider_id(signing.load_key(key_file))
        body = wait_for(lambda: advertised(registry.url, provider_id), timeout=30, what="the advertisement")
        assert body["country"] == "DE" and body["ip_address"] == "127.0.0.1" and body["platform"] == "x86_64"
        assert body["resources"]["cpu"] >= 1
        # DISCOVERY_ALLOWED_PROVIDERS adds to the embedded provider itself, which always writes.
        assert settings.allowed_providers == {provider_id, signing.provider_id(partner)}
        assert register(registry.url, partner).status_code == 200
        assert register(registry.url, Ed25519PrivateKey.generate()).json()["code"] == "AUTH_002"

        env_file = tmp_path / "discovery.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert f"DISCOVERY_URL={registry.url}\n" in env_file.read_text()
        assert f"DISCOVERY_PROVIDER_KEY_FILE={key_file}\n" in env_file.read_text()
        assert "DISCOVERY_HOST_SSH_USER=visa\n" in env_file.read_text()
        assert live.discovery_env()["DISCOVERY_TRUSTED_PROVIDERS"] == trusted
        pem = key_file.read_text()
        secret_lines = [line for line in pem.splitlines() if "PRIVATE KEY" not in line]
        assert not any(line in caplog.text or line in env_file.read_text() for line in secret_lines)
        assert provider_id in caplog.text  # the public id is logged, so operators can allow-list it
    finally:
        live.stop()


def test_the_embedded_registry_takes_writes_only_from_this_provider_and_the_playbooks_trust_only_it(
    tmp_path: Path, simulator: Any, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DISCOVERY_PORT", "0")
    live = start_service(tmp_path, simulator, discovery_enabled=True)
    try:
        assert live.runtime.registry is not None
        url = live.runtime.registry.url
        ours = signing.load_key(live.settings.provider_key_path)
        refused = register(url, Ed25519PrivateKey.generate())
        assert refused.status_code == 403 and refused.json()["code"] == "AUTH_002", refused.text
        assert httpx.get(f"{url}/api/v1/hosts").json() == []
        assert register(url, ours).status_code == 200
        assert live.discovery_env()["DISCOVERY_TRUSTED_PROVIDERS"] == signing.provider_id(ours)
    finally:
        live.stop()


def test_an_external_registry_is_used_when_discovery_url_is_set_and_the_offer_is_withdrawn_at_stop(
    tmp_path: Path, simulator: Any
):
    external = start_test_registry(tmp_path / "registry")
    live = start_service(tmp_path / "service", simulator, discovery_enabled=True, discovery_url=external.url)
    try:
        assert live.runtime.registry is None
        provider_id = signing.provider_id(signing.load_key(tmp_path / "service" / "discovery-provider.key"))
        wait_for(lambda: advertised(external.url, provider_id), timeout=30, what="the advertisement")
        live.stop()
        assert advertised(external.url, provider_id) is None  # a stopped provider withdraws its offer
    finally:
        live.stop()
        external.stop()
