"""The registry's HTTP routes under /api/v1 (the Golem discovery server's paths) and /health."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from discovery import auth, store
from discovery.context import Registry, committed, registry, session
from discovery.errors import RegistryError, advertisement_not_found, host_not_found, not_owner, too_many_hosts
from discovery.models import Advertisement
from discovery.schemas import AdvertisementIn, AdvertisementOut, Country, Deleted, HostIn, HostOut

log = logging.getLogger(__name__)
CHANGED_HEADER = "X-Registry-Changed"

RegistryDep = Annotated[Registry, Depends(registry)]
# Committed before the response goes out, so a client that reads right after its write sees it.
SessionDep = Annotated[Session, Depends(session, scope="function")]
# At most the largest value the columns hold (32-bit INTEGER): PostgreSQL refuses to compare them with a larger one.
Minimum = Annotated[int | None, Query(ge=1, le=2**31 - 1)]

api = APIRouter(prefix="/api/v1")
health = APIRouter()


@api.post("/advertisements", response_model=AdvertisementOut, tags=["advertisements"])
def post_advertisement(
    body: AdvertisementIn,
    caller: Annotated[auth.Caller, Depends(auth.advertiser)],
    context: RegistryDep,
    db: SessionDep,
) -> AdvertisementOut:
    """Create or replace the calling provider's advertisement (signed)."""
    existing = db.get(Advertisement, caller.provider_id)
    if existing is not None and existing.signed and not caller.signed:
        raise not_owner("a signed provider's advertisement cannot be replaced by an unsigned request")
    try:
        row = store.upsert_advertisement(db, caller.provider_id, body, caller.signed, context.now())
    except SQLAlchemyError:
        log.exception("storing the advertisement of %s failed", caller.provider_id)
        raise RegistryError(500, "ADV_001", "failed to store the advertisement") from None
    return committed(db, store.advertisement_out(row))


@api.get("/advertisements", response_model=list[AdvertisementOut], tags=["advertisements"])
def list_advertisements(
    context: RegistryDep,
    db: SessionDep,
    cpu: Minimum = None,
    memory: Minimum = None,
    storage: Minimum = None,
    country: Annotated[Country | None, Query()] = None,
    platform: Annotated[str | None, Query(max_length=32)] = None,
) -> list[AdvertisementOut]:
    """Live advertisements offering at least the given vCPUs and GB, in a country (ISO 3166-1 alpha-2)."""
    rows = store.find_advertisements(db, context.fresh_since(), cpu, memory, storage, country, platform)
    return committed(db, [store.advertisement_out(row) for row in rows])


@api.get("/advertisements/{provider_id}", response_model=AdvertisementOut, tags=["advertisements"])
def get_advertisement(provider_id: str, context: RegistryDep, db: SessionDep) -> AdvertisementOut:
    """One provider's live advertisement."""
    row = store.live_advertisement(db, provider_id.lower(), context.fresh_since())
    if row is None:
        raise advertisement_not_found()
    return committed(db, store.advertisement_out(row))


@api.delete("/advertisements/{provider_id}", response_model=Deleted, tags=["advertisements"])
def delete_advertisement(
    provider_id: str, caller: Annotated[str, Depends(auth.signed_provider)], db: SessionDep
) -> Deleted:
    """Withdraw an advertisement (signed by the provider it belongs to)."""
    if provider_id.lower() != caller:
        raise not_owner("only the provider that owns an advertisement may delete it")
    if not store.delete_advertisement(db, caller):
        raise advertisement_not_found()
    return committed(db, Deleted())


@api.post("/hosts", response_model=HostOut, tags=["hosts"])
def post_host(
    body: HostIn,
    caller: Annotated[str, Depends(auth.signed_provider)],
    context: RegistryDep,
    db: SessionDep,
    response: Response,
) -> HostOut:
    """Register a provisioned host, or replace the caller's record of that name (signed).

    The header `X-Registry-Changed: true|false` says whether the record changed, so a client converges in one
    request; an unchanged record keeps its `updated_at`. A provider holds at most DISCOVERY_MAX_HOSTS_PER_PROVIDER
    hosts: a new name beyond that is refused (409 HOST_LIMIT), its registered names can still be updated."""
    limit = context.settings.max_hosts_per_provider
    # Exact on SQLite (writers are serialised); on PostgreSQL concurrent new names may pass it by a few.
    if store.get_host(db, caller, body.name) is None and store.count_hosts(db, caller) >= limit:
        raise too_many_hosts(limit)
    try:
        row, changed = store.upsert_host(db, caller, body, context.now())
    except SQLAlchemyError:
        log.exception("storing host %s of %s failed", body.name, caller)
        raise RegistryError(500, "HOST_001", "failed to store the host") from None
    response.headers[CHANGED_HEADER] = "true" if changed else "false"
    return committed(db, store.host_out(row))


@api.get("/hosts", response_model=list[HostOut], tags=["hosts"])
def list_hosts(
    reader: Annotated[str | None, Depends(auth.host_reader)],
    db: SessionDep,
    group: Annotated[str | None, Query(max_length=64)] = None,
    provider_id: Annotated[str | None, Query(max_length=128)] = None,
    name: Annotated[str | None, Query(max_length=63)] = None,
) -> list[HostOut]:
    """Registered hosts (Bearer DISCOVERY_READ_TOKEN when set; a signed provider sees its own)."""
    if reader is not None:
        if provider_id is not None and provider_id != reader:
            raise not_owner("a provider may read only its own hosts")
        provider_id = reader
    return committed(db, [store.host_out(row) for row in store.find_hosts(db, group, provider_id, name)])


@api.delete("/hosts/{name}", response_model=Deleted, tags=["hosts"])
def delete_host(name: str, caller: Annotated[str, Depends(auth.signed_provider)], db: SessionDep) -> Deleted:
    """Deregister one of the caller's hosts (signed)."""
    if not store.delete_host(db, caller, name):
        raise host_not_found()
    return committed(db, Deleted())


@health.get("/health", tags=["health"])
def healthy() -> dict[str, str]:
    """Liveness (never rate limited)."""
    return {"status": "healthy"}
