"""Who is calling: signed providers (every write), unsigned Golem nodes (only when allowed), readers.

Order matters: the signature is checked before anything is recorded, and a nonce is committed on its own
before the handler runs, so a request that fails later (404, 403) still cannot be replayed once the
state has changed. Only fresh, verified requests count against a provider's rate limit: replays of a
provider's requests must not use up its budget.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import IntegrityError

from discovery import signing, store
from discovery.context import Registry, registry
from discovery.errors import bad_read_token, bad_signature, missing_credentials, not_allowed, rate_limited

# The Golem nodes' ids (Ethereum addresses) and similar; ids of the signed form (64 hex digits) must sign.
UNSIGNED_PROVIDER_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass(frozen=True)
class Caller:
    provider_id: str
    signed: bool


async def raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(raw_body)]


def _is_unsigned_request(request: Request) -> bool:
    return "x-timestamp" not in request.headers and "x-nonce" not in request.headers


def _verified_provider(request: Request, body: bytes) -> str:
    headers = request.headers
    provider, signature = headers.get("x-provider-id", ""), headers.get("x-provider-signature", "")
    timestamp, nonce = headers.get("x-timestamp", ""), headers.get("x-nonce", "")
    if not (provider and signature and timestamp and nonce):
        raise missing_credentials(
            "missing provider credentials (X-Provider-ID, X-Timestamp, X-Nonce, X-Provider-Signature)"
        )
    key = signing.public_key(provider)
    if key is None:
        raise bad_signature("X-Provider-ID is not a provider key (64 lowercase hex digits of an ed25519 key)")
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise bad_signature("X-Timestamp must be an integer number of Unix seconds")
    if not signing.NONCE.match(nonce):
        raise bad_signature("X-Nonce must be 16-64 characters of A-Z a-z 0-9 _ -")
    context = registry(request)
    if abs(context.clock() - int(timestamp)) > signing.SIGNATURE_WINDOW_S:
        raise bad_signature(f"X-Timestamp is more than {signing.SIGNATURE_WINDOW_S} s away from the server's time")
    message = signing.canonical_message(request.method, request.url.path, timestamp, nonce, body)
    if not signing.verify(key, signature, message):
        raise bad_signature("the signature does not verify")
    _check_allowed(context, provider)
    _remember_nonce(context, provider, nonce, int(timestamp))
    _count_provider(context, provider)
    return provider


def _check_allowed(context: Registry, provider: str) -> None:
    allowed = context.settings.allowed_providers
    if allowed and provider.lower() not in allowed:
        raise not_allowed()


def _remember_nonce(context: Registry, provider: str, nonce: str, timestamp: int) -> None:
    # Kept until the request's timestamp leaves the window: after that the timestamp check refuses it.
    expires_at = datetime.fromtimestamp(timestamp, UTC) + timedelta(seconds=signing.SIGNATURE_WINDOW_S)
    try:
        with context.db.session() as session:
            store.add_nonce(session, provider, nonce, expires_at)
    except IntegrityError:
        raise bad_signature("replayed request: this X-Nonce was already used") from None


def _count_provider(context: Registry, provider: str) -> None:
    retry_after = context.per_provider.hit(provider)
    if retry_after is not None:
        raise rate_limited(retry_after)


def signed_provider(request: Request, body: RawBody) -> str:
    """The provider that signed this request (401/403/429 otherwise)."""
    return _verified_provider(request, body)


def advertiser(request: Request, body: RawBody) -> Caller:
    """A signed provider, or, with DISCOVERY_ACCEPT_UNSIGNED_PROVIDERS, a Golem node's placeholder signature."""
    context = registry(request)
    if not (context.settings.accept_unsigned_providers and _is_unsigned_request(request)):
        return Caller(_verified_provider(request, body), signed=True)
    provider = request.headers.get("x-provider-id", "")
    if not provider or not request.headers.get("x-provider-signature"):
        raise missing_credentials()
    if not UNSIGNED_PROVIDER_ID.match(provider) or signing.PROVIDER_ID.match(provider.lower()):
        raise bad_signature("unsigned requests may not use this X-Provider-ID (ids of key form must sign)")
    provider = provider.lower()
    _check_allowed(context, provider)
    _count_provider(context, provider)
    return Caller(provider, signed=False)


def host_reader(request: Request, body: RawBody) -> str | None:
    """Who may read hosts: None for everyone (no DISCOVERY_READ_TOKEN, or the right bearer token), else the
    signed provider, which then sees only its own hosts."""
    token = registry(request).settings.read_token
    if token is None:
        return None
    given = request.headers.get("authorization", "")
    if given.startswith("Bearer ") and hmac.compare_digest(
        given.removeprefix("Bearer ").encode(), token.get_secret_value().encode()
    ):
        return None
    if "x-provider-id" in request.headers:
        return _verified_provider(request, body)
    raise bad_read_token()
