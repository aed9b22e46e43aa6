"""The discovery registry over HTTP: signatures, ownership, filters, expiry, rate limits, validation, errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from discovery import signing
from discovery.app import sweep_once
from discovery.client import ProviderAuth
from discovery.ratelimit import RateLimiter
from tests.conftest import FakeClock, start_test_registry

ADS = "/api/v1/advertisements"
HOSTS = "/api/v1/hosts"
OFFER = {"ip_address": "192.168.1.100", "country": "SE", "resources": {"cpu": 4, "memory": 8, "storage": 40}}


class Registry:
    def __init__(self, handle: Any, clock: FakeClock) -> None:
        self.handle = handle
        self.clock = clock
        self.anonymous = httpx.Client(base_url=handle.url, timeout=10)

    @property
    def state(self) -> Any:
        return self.handle.server.config.app.state.registry

    def provider(self, key: Ed25519PrivateKey | None = None, **client: Any) -> httpx.Client:
        key = key or Ed25519PrivateKey.generate()
        return httpx.Client(base_url=self.handle.url, auth=ProviderAuth(key, self.clock), timeout=10, **client)

    def signed(self, key: Ed25519PrivateKey, method: str, path: str, body: bytes = b"", **overrides: Any) -> dict:
        values = {"timestamp": int(self.clock()), "nonce": signing.new_nonce()} | overrides
        headers = signing.signed_headers(key, method, path, body, values["timestamp"], values["nonce"])
        return headers | {"Content-Type": "application/json"}

    def stop(self) -> None:
        self.anonymous.close()
        self.handle.stop()


@pytest.fixture
def registry(tmp_path: Path, clock: FakeClock, database_url: str) -> Iterator[Registry]:
    """A registry on a fresh database, SQLite or PostgreSQL (each test runs on both)."""
    live = start(tmp_path, clock, database_url)
    yield live
    live.stop()


def start(tmp_path: Path, clock: FakeClock, database_url: str, **settings: Any) -> Registry:
    return Registry(start_test_registry(tmp_path, clock, database_url=database_url, **settings), clock)


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and body["detail"] == {"code": code, "message": body["message"]}
    assert body["timestamp"].endswith("Z")
    return str(body["message"])


# --- advertisements and signatures


def test_a_signed_advertisement_is_stored_under_the_key_and_returned(registry: Registry):
    key = Ed25519PrivateKey.generate()
    with registry.provider(key) as provider:
        answer = provider.post(
            ADS, json=OFFER | {"country": "se", "platform": "x86_64", "pricing": {"usd_per_core_month": 5}}
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    provider_id = signing.provider_id(key)
    assert body["provider_id"] == provider_id and body["country"] == "SE" and body["resources"] == OFFER["resources"]
    assert body["provider_name"] == f"provider-{provider_id[:12]}"
    assert body["platform"] == "x86_64" and body["pricing"] == {"usd_per_core_month": 5.0}
    assert body["created_at"] == body["updated_at"] == "2027-01-15T08:00:00Z"
    assert registry.anonymous.get(f"{ADS}/{provider_id}").json() == body
    assert registry.anonymous.get(ADS).json() == [body]


def test_an_update_replaces_the_record_and_keeps_its_creation_time(registry: Registry):
    with registry.provider() as provider:
        first = provider.post(ADS, json=OFFER | {"provider_name": "lab"}).json()
        registry.clock.advance(30)
        second = provider.post(ADS, json=OFFER | {"resources": {"cpu": 2, "memory": 4, "storage": 20}}).json()
    assert second["created_at"] == first["created_at"] and second["updated_at"] > first["updated_at"]
    assert second["resources"] == {"cpu": 2, "memory": 4, "storage": 20} and second["provider_name"] == "lab"
    assert len(registry.anonymous.get(ADS).json()) == 1


def test_writes_without_credentials_are_refused_with_auth_003(registry: Registry):
    assert "missing provider credentials" in error(registry.anonymous.post(ADS, json=OFFER), 401, "AUTH_003")
    placeholder = {"X-Provider-ID": "0xabc", "X-Provider-Signature": "signature"}
    error(registry.anonymous.post(ADS, json=OFFER, headers=placeholder), 401, "AUTH_003")
    assert registry.anonymous.get(ADS).json() == []


def test_a_signature_by_another_key_or_over_another_body_is_refused(registry: Registry):
    mine, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    body = json.dumps(OFFER).encode()
    forged = registry.signed(theirs, "POST", ADS, body) | {"X-Provider-ID": signing.provider_id(mine)}
    assert "does not verify" in error(registry.anonymous.post(ADS, content=body, headers=forged), 401, "AUTH_001")
    tampered = json.dumps(OFFER | {"country": "FR"}).encode()
    headers = registry.signed(mine, "POST", ADS, body)
    error(registry.anonymous.post(ADS, content=tampered, headers=headers), 401, "AUTH_001")
    other_path = registry.signed(mine, "POST", HOSTS, body)
    error(registry.anonymous.post(ADS, content=body, headers=other_path), 401, "AUTH_001")
    assert registry.anonymous.get(ADS).json() == []


@pytest.mark.parametrize("skew", [-301, 301])
def test_a_timestamp_more_than_300_s_away_is_refused(registry: Registry, skew: int):
    key = Ed25519PrivateKey.generate()
    body = json.dumps(OFFER).encode()
    headers = registry.signed(key, "POST", ADS, body, timestamp=int(registry.clock()) + skew)
    assert "300 s" in error(registry.anonymous.post(ADS, content=body, headers=headers), 401, "AUTH_001")


def test_a_replayed_request_is_refused_even_when_the_first_one_failed(registry: Registry):
    key = Ed25519PrivateKey.generate()
    body = json.dumps(OFFER).encode()
    headers = registry.signed(key, "POST", ADS, body)
    assert registry.anonymous.post(ADS, content=body, headers=headers).status_code == 200
    assert "replayed" in error(registry.anonymous.post(ADS, content=body, headers=headers), 401, "AUTH_001")
    # A DELETE answered 404 must not become valid later, once the provider advertises again.
    path = f"{ADS}/{signing.provider_id(key)}"
    delete = registry.signed(key, "DELETE", path)
    with registry.provider(key) as provider:
        assert provider.delete(path).status_code == 200
        error(registry.anonymous.delete(path, headers=delete), 404, "ADV_004")
        assert provider.post(ADS, json=OFFER).status_code == 200
    error(registry.anonymous.delete(path, headers=delete), 401, "AUTH_001")
    assert registry.anonymous.get(path).status_code == 200


@pytest.mark.parametrize(
    ("provider_id", "nonce", "timestamp"),
    [
        ("0x52908400098527886e0f7030069857d2e4169ee7", None, None),
        ("AB" * 32, None, None),
        (None, "short", None),
        (None, "bad nonce with spaces!", None),
        (None, None, "1.5e9"),
    ],
)
def test_malformed_ids_nonces_and_timestamps_are_refused(
    registry: Registry, provider_id: str | None, nonce: str | None, timestamp: str | None
):
    key = Ed25519PrivateKey.generate()
    body = json.dumps(OFFER).encode()
    headers = registry.signed(key, "POST", ADS, body)
    headers |= {
        k: v for k, v in {"X-Provider-ID": provider_id, "X-Nonce": nonce, "X-Timestamp": timestamp}.items() if v
    }
    error(registry.anonymous.post(ADS, content=body, headers=headers), 401, "AUTH_001")


def test_only_the_owner_deletes_an_advertisement(registry: Registry):
    owner = Ed25519PrivateKey.generate()
    path = f"{ADS}/{signing.provider_id(owner)}"
    with registry.provider(owner) as provider, registry.provider() as intruder:
        provider.post(ADS, json=OFFER)
        error(intruder.delete(path), 403, "AUTH_004")
        assert registry.anonymous.get(path).status_code == 200
        assert provider.delete(path).json() == {"status": "success"}
        error(provider.delete(path), 404, "ADV_004")
    error(registry.anonymous.get(path), 404, "ADV_004")


def test_allowed_providers_restrict_writers(tmp_path: Path, clock: FakeClock, database_url: str):
    allowed = Ed25519PrivateKey.generate()
    live = start(tmp_path, clock, database_url, allowed_providers_csv=signing.provider_id(allowed))
    try:
        with live.provider(allowed) as good, live.provider() as other:
            assert good.post(ADS, json=OFFER).status_code == 200
            assert "DISCOVERY_ALLOWED_PROVIDERS" in error(other.post(ADS, json=OFFER), 403, "AUTH_002")
            error(other.post(HOSTS, json=host()), 403, "AUTH_002")
        assert len(live.anonymous.get(ADS).json()) == 1
        assert live.anonymous.get(HOSTS).json() == []
    finally:
        live.stop()


def test_an_asterisk_allows_every_provider(tmp_path: Path, clock: FakeClock, database_url: str):
    live = start(
        tmp_path, clock, database_url, allowed_providers_csv=f"{signing.provider_id(Ed25519PrivateKey.generate())}, *"
    )
    try:
        with live.provider() as anyone:
            assert anyone.post(HOSTS, json=host()).status_code == 200
    finally:
        live.stop()


# --- queries and expiry


def test_filters_keep_offers_at_least_as_large_in_the_country(registry: Registry):
    offers = [("SE", 4, 8, 40, "x86_64"), ("SE", 16, 64, 500, "arm64"), ("FR", 32, 128, 1000, "x86_64")]
    ids = []
    for country, cpu, memory, storage, platform in offers:
        key = Ed25519PrivateKey.generate()
        ids.append(signing.provider_id(key))
        with registry.provider(key) as provider:
            body = {"ip_address": "10.0.0.1", "country": country, "platform": platform}
            provider.post(ADS, json=body | {"resources": {"cpu": cpu, "memory": memory, "storage": storage}})

    def found(**query: Any) -> set[str]:
        answer = registry.anonymous.get(ADS, params=query)
        assert answer.status_code == 200, answer.text
        return {ad["provider_id"] for ad in answer.json()}

    assert found() == set(ids)
    assert found(cpu=16) == {ids[1], ids[2]}
    assert found(cpu=4, memory=64, storage=500) == {ids[1], ids[2]}
    assert found(country="se") == {ids[0], ids[1]}
    assert found(country="SE", memory=65) == set()
    assert found(platform="x86_64", cpu=5) == {ids[2]}
    assert found(storage=2**31 - 1) == set()  # more than any offer, as much as a column holds
    error(registry.anonymous.get(ADS, params={"cpu": 0}), 400, "ADV_002")
    error(registry.anonymous.get(ADS, params={"storage": 2**31}), 400, "ADV_002")  # PostgreSQL cannot compare it
    error(registry.anonymous.get(ADS, params={"country": "XX"}), 400, "ADV_002")


def test_expired_advertisements_vanish_at_once_and_the_sweeper_deletes_them(registry: Registry):
    key = Ed25519PrivateKey.generate()
    path = f"{ADS}/{signing.provider_id(key)}"
    with registry.provider(key) as provider:
        provider.post(ADS, json=OFFER)
    registry.clock.advance(300)
    assert registry.anonymous.get(path).status_code == 200
    registry.clock.advance(1)
    assert registry.anonymous.get(ADS).json() == []
    error(registry.anonymous.get(path), 404, "ADV_004")
    assert sweep_once(registry.state) == (1, 1)  # the advertisement and the nonce of its POST
    assert sweep_once(registry.state) == (0, 0)


# --- rate limits


def test_clients_over_the_limit_get_429_with_retry_after_and_health_is_never_limited(
    tmp_path: Path, clock: FakeClock, database_url: str
):
    live = start(tmp_path, clock, database_url, rate_limit_per_minute=3)
    try:
        assert [live.anonymous.get(ADS).status_code for _ in range(3)] == [200, 200, 200]
        clock.advance(20)
        limited = live.anonymous.get(ADS)
        error(limited, 429, "RATE_001")
        assert limited.headers["Retry-After"] == "40"
        assert all(live.anonymous.get("/health").status_code == 200 for _ in range(10))
        clock.advance(40)
        assert live.anonymous.get(ADS).status_code == 200
    finally:
        live.stop()


def test_a_provider_is_limited_across_client_addresses(tmp_path: Path, clock: FakeClock, database_url: str):
    live = start(tmp_path, clock, database_url, rate_limit_per_minute=3)
    key = Ed25519PrivateKey.generate()
    other_address = httpx.HTTPTransport(local_address="127.0.0.2")
    try:
        with live.provider(key) as provider, live.provider(key, transport=other_address) as elsewhere:
            assert [provider.post(ADS, json=OFFER).status_code for _ in range(3)] == [200, 200, 200]
            limited = elsewhere.post(ADS, json=OFFER)
            error(limited, 429, "RATE_001")
            assert int(limited.headers["Retry-After"]) == 60
        with live.provider(transport=httpx.HTTPTransport(local_address="127.0.0.3")) as another:
            assert another.post(ADS, json=OFFER).status_code == 200
    finally:
        live.stop()


def test_the_limiter_forgets_finished_windows_and_holds_a_bounded_number_of_keys(clock: FakeClock):
    limiter = RateLimiter(2, max_keys=100, clock=clock)
    for n in range(1000):
        assert limiter.hit(f"10.0.{n // 256}.{n % 256}") is None
    assert len(limiter) == 100
    clock.advance(61)
    assert len(limiter) == 0
    assert [limiter.hit("a"), limiter.hit("a"), limiter.hit("a")] == [None, None, 60]


# --- validation


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"resources": {"cpu": 0, "memory": 8, "storage": 40}}, "resources.cpu"),
        ({"resources": {"cpu": 4.5, "memory": 8, "storage": 40}}, "resources.cpu"),
        ({"resources": {"cpu": "4", "memory": 8, "storage": 40}}, "resources.cpu"),
        ({"resources": {"cpu": 4, "memory": 8}}, "resources.storage"),
        ({"resources": {"cpu": 4, "memory": 8, "storage": 10**12}}, "resources.storage"),
        ({"resources": {"cpu": 4, "memory": 8, "storage": 40, "gpu": 1}}, "resources.gpu"),
        ({"ip_address": "999.1.1.1"}, "ip_address"),
        ({"country": "XX"}, "country"),
        ({"country": "SWE"}, "country"),
        ({"platform": "x86 64"}, "platform"),
    ],
)
def test_invalid_advertisements_are_refused_with_adv_002(registry: Registry, change: dict, field: str):
    with registry.provider() as provider:
        message = error(provider.post(ADS, json=OFFER | change), 400, "ADV_002")
    assert message.startswith(field)
    assert registry.anonymous.get(ADS).json() == []


def test_oversized_bodies_are_refused_before_they_are_read(registry: Registry):
    with registry.provider() as provider:
        huge = provider.post(HOSTS, json={"name": "web-1", "address": "10.0.0.1", "vars": {"blob": "x" * 70_000}})
    error(huge, 413, "BODY_TOO_LARGE")


def chunked(body: bytes, size: int = 8192) -> Iterator[bytes]:
    """A body httpx sends with Transfer-Encoding: chunked and no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_body_is_limited_by_the_bytes_received_and_changes_nothing(registry: Registry):
    key = Ed25519PrivateKey.generate()
    huge = json.dumps(host(vars={"blob": "x" * 70_000})).encode()
    headers = registry.signed(key, "POST", HOSTS, huge)
    refused = registry.anonymous.post(HOSTS, content=chunked(huge), headers=headers)
    assert refused.request.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in refused.request.headers
    assert "65536 bytes" in error(refused, 413, "BODY_TOO_LARGE")
    assert registry.anonymous.get(HOSTS).json() == []
    # A chunked body within the limit reaches the handler whole (and its signature verifies).
    small = json.dumps(host()).encode()
    accepted = registry.anonymous.post(
        HOSTS, content=chunked(small, 64), headers=registry.signed(key, "POST", HOSTS, small)
    )
    assert accepted.status_code == 200, accepted.text
    assert [h["name"] for h in registry.anonymous.get(HOSTS).json()] == ["web-1"]


def test_ipv6_addresses_are_accepted_and_a_body_that_is_not_json_is_adv_002(registry: Registry):
    with registry.provider() as provider:
        assert provider.post(ADS, json=OFFER | {"ip_address": "2001:DB8::1"}).json()["ip_address"] == "2001:db8::1"
        garbage = provider.post(ADS, content=b"{not json", headers={"Content-Type": "application/json"})
    assert "not valid JSON" in error(garbage, 400, "ADV_002")


# --- unsigned Golem providers


def test_unsigned_golem_providers_are_accepted_only_when_enabled_and_never_over_signed_ones(
    tmp_path: Path, clock: FakeClock, database_url: str, caplog: pytest.LogCaptureFixture
):
    golem = {"X-Provider-ID": "0x52908400098527886E0F7030069857D2E4169EE7", "X-Provider-Signature": "signature"}
    with caplog.at_level(logging.WARNING, logger="discovery.app"):
        live = start(tmp_path, clock, database_url, accept_unsigned_providers=True)
    try:
        assert "DISCOVERY_ACCEPT_UNSIGNED_PROVIDERS is on" in caplog.text
        stored = live.anonymous.post(ADS, json=OFFER, headers=golem)
        assert stored.status_code == 200 and stored.json()["provider_id"] == golem["X-Provider-ID"].lower()
        error(live.anonymous.post(HOSTS, json={"name": "x", "address": "10.0.0.1"}, headers=golem), 401, "AUTH_003")
        signed = Ed25519PrivateKey.generate()
        with live.provider(signed) as provider:
            provider.post(ADS, json=OFFER)
        squatter = golem | {"X-Provider-ID": signing.provider_id(signed)}
        error(live.anonymous.post(ADS, json=OFFER | {"country": "FR"}, headers=squatter), 401, "AUTH_001")
        assert live.anonymous.get(f"{ADS}/{signing.provider_id(signed)}").json()["country"] == "SE"
        error(live.anonymous.delete(f"{ADS}/{golem['X-Provider-ID']}", headers=golem), 401, "AUTH_003")
    finally:
        live.stop()


# --- hosts


def host(name: str = "web-1", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": "10.0.3.17",
        "ssh_user": "visa",
        "groups": ["visa"],
        "instance_id": 100042,
    } | fields


def test_hosts_are_upserted_per_provider_and_name_and_filtered(registry: Registry):
    first, second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with registry.provider(first) as one, registry.provider(second) as two:
        created = one.post(HOSTS, json=host(vars={"role": "frontend"})).json()
        assert created["instance_id"] == "100042" and created["ssh_port"] == 22 and created["groups"] == ["visa"]
        registry.clock.advance(5)
        updated = one.post(HOSTS, json=host(groups=["visa", "web", "visa"], ssh_port=2222)).json()
        assert updated["groups"] == ["visa", "web"] and updated["ssh_port"] == 2222
        assert updated["created_at"] == created["created_at"] != updated["updated_at"]
        two.post(HOSTS, json=host(groups=["db"], address="db.example.org"))
        one.post(HOSTS, json=host("web-2", groups=[]))

    def names(**query: Any) -> list[tuple[str, str]]:
        return [(h["name"], h["provider_id"]) for h in registry.anonymous.get(HOSTS, params=query).json()]

    one_id, two_id = signing.provider_id(first), signing.provider_id(second)
    assert sorted(names()) == sorted([("web-1", one_id), ("web-1", two_id), ("web-2", one_id)])
    assert names(group="web") == [("web-1", one_id)]
    assert names(group="db") == [("web-1", two_id)]
    assert sorted(names(provider_id=one_id)) == [("web-1", one_id), ("web-2", one_id)]


def test_a_host_post_says_whether_the_record_changed_and_an_unchanged_one_keeps_updated_at(registry: Registry):
    with registry.provider(Ed25519PrivateKey.generate()) as one:
        first = one.post(HOSTS, json=host())
        assert first.headers["X-Registry-Changed"] == "true"
        registry.clock.advance(5)
        same = one.post(HOSTS, json=host(groups=["visa", "visa"]))
        assert same.headers["X-Registry-Changed"] == "false"
        assert same.json()["updated_at"] == first.json()["updated_at"]
        moved = one.post(HOSTS, json=host(address="10.0.3.18"))
        assert moved.headers["X-Registry-Changed"] == "true" and moved.json()["address"] == "10.0.3.18"


def test_a_provider_deregisters_only_its_own_hosts(registry: Registry):
    owner = Ed25519PrivateKey.generate()
    with registry.provider(owner) as one, registry.provider() as other:
        one.post(HOSTS, json=host())
        error(other.delete(f"{HOSTS}/web-1"), 404, "HOST_004")
        assert len(registry.anonymous.get(HOSTS).json()) == 1
        assert one.delete(f"{HOSTS}/web-1").json() == {"status": "success"}
    assert registry.anonymous.get(HOSTS).json() == []


def test_hosts_are_capped_per_provider_and_a_registered_name_can_still_be_updated(
    tmp_path: Path, clock: FakeClock, database_url: str
):
    live = start(tmp_path, clock, database_url, max_hosts_per_provider=2)
    key = Ed25519PrivateKey.generate()

    def names() -> list[str]:
        return [h["name"] for h in live.anonymous.get(HOSTS, params={"provider_id": signing.provider_id(key)}).json()]

    try:
        with live.provider(key) as one, live.provider() as other:
            assert [one.post(HOSTS, json=host(name)).status_code for name in ("web-1", "web-2")] == [200, 200]
            assert "at most 2 hosts" in error(one.post(HOSTS, json=host("web-3")), 409, "HOST_LIMIT")
            assert names() == ["web-1", "web-2"]
            updated = one.post(HOSTS, json=host("web-2", address="10.0.3.18"))
            assert updated.status_code == 200 and updated.json()["address"] == "10.0.3.18"
            assert other.post(HOSTS, json=host("web-3")).status_code == 200  # the cap is per provider
            assert one.delete(f"{HOSTS}/web-1").status_code == 200
            assert one.post(HOSTS, json=host("web-3")).status_code == 200
        assert names() == ["web-2", "web-3"]
    finally:
        live.stop()


@pytest.mark.parametrize(
    "change",
    [
        {"vars": {"ansible_ssh_common_args": "-o ProxyCommand=touch /tmp/pwned"}},
        {"vars": {"bad-name": 1}},
        {"name": "-web"},
        {"address": "not an address!"},
        {"ssh_port": 0},
        {"groups": ["has-dash"]},
        {"unknown": 1},
    ],
)
def test_invalid_or_dangerous_hosts_are_refused_with_host_002(registry: Registry, change: dict):
    with registry.provider() as provider:
        error(provider.post(HOSTS, json=host() | change), 400, "HOST_002")
    assert registry.anonymous.get(HOSTS).json() == []


def test_reading_hosts_needs_the_read_token_when_set_and_a_signed_provider_reads_its_own(
    tmp_path: Path, clock: FakeClock, database_url: str
):
    live = start(tmp_path, clock, database_url, read_token="read-token-0123456789")
    key = Ed25519PrivateKey.generate()
    try:
        with live.provider(key) as provider, live.provider() as other:
            provider.post(HOSTS, json=host())
            other.post(HOSTS, json=host("db-1"))
            assert [h["name"] for h in provider.get(HOSTS).json()] == ["web-1"]
            error(
                provider.get(HOSTS, params={"provider_id": signing.provider_id(Ed25519PrivateKey.generate())}),
                403,
                "AUTH_004",
            )
        error(live.anonymous.get(HOSTS), 401, "AUTH_005")
        error(live.anonymous.get(HOSTS, headers={"Authorization": "Bearer wrong"}), 401, "AUTH_005")
        readable = live.anonymous.get(HOSTS, headers={"Authorization": "Bearer read-token-0123456789"})
        assert sorted(h["name"] for h in readable.json()) == ["db-1", "web-1"]
        assert live.anonymous.get(ADS).status_code == 200  # advertisements stay public
    finally:
        live.stop()


def test_health_and_openapi_paths(registry: Registry):
    assert registry.anonymous.get("/health").json() == {"status": "healthy"}
    paths = registry.anonymous.get("/api/v1/openapi.json").json()["paths"]
    assert {ADS, f"{ADS}/{{provider_id}}", HOSTS, f"{HOSTS}/{{name}}", "/health"} <= set(paths)
    error(registry.anonymous.get("/api/v1/nothing"), 404, "NOT_FOUND")


def test_a_burst_of_concurrent_writes_all_succeed(registry: Registry):
    """More concurrent writers than request threads: SQLite's write lock must never wait for a pool thread."""
    key = Ed25519PrivateKey.generate()

    def register(n: int) -> int:
        with registry.provider(key) as client:
            return client.post(HOSTS, json=host(f"burst-{n}", address=f"10.0.9.{n}")).status_code

    with ThreadPoolExecutor(max_workers=60) as pool:
        codes = list(pool.map(register, range(60)))
    assert codes == [200] * 60
    assert len(registry.anonymous.get(HOSTS, params={"provider_id": signing.provider_id(key)}).json()) == 60
