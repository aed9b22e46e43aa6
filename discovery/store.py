"""Reads and writes of the registry's tables; the caller owns the session (one per request)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Delete, delete, func, select
from sqlalchemy.orm import Session

from discovery.models import Advertisement, Host, HostGroup, SeenNonce
from discovery.schemas import AdvertisementIn, AdvertisementOut, HostIn, HostOut, Resources


def default_provider_name(provider_id: str) -> str:
    """A readable label for providers that send no name (the Golem requestor displays one for everyone)."""
    return f"provider-{provider_id.removeprefix('0x')[:12]}"


# --- nonces


def add_nonce(session: Session, provider_id: str, nonce: str, expires_at: datetime) -> None:
    """Record a nonce; committing it raises IntegrityError when the provider already used it (a replay)."""
    session.add(SeenNonce(provider_id=provider_id, nonce=nonce, expires_at=expires_at))


# --- advertisements


def advertisement_out(row: Advertisement) -> AdvertisementOut:
    return AdvertisementOut(
        provider_id=row.provider_id,
        provider_name=row.provider_name,
        ip_address=row.ip_address,
        country=row.country,
        platform=row.platform,
        resources=Resources(cpu=row.cpu, memory=row.memory_gb, storage=row.storage_gb),
        pricing=row.pricing,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def live_advertisement(session: Session, provider_id: str, fresh_since: datetime) -> Advertisement | None:
    row = session.get(Advertisement, provider_id)
    return row if row is not None and row.updated_at >= fresh_since else None


def upsert_advertisement(
    session: Session, provider_id: str, body: AdvertisementIn, signed: bool, now: datetime
) -> Advertisement:
    row = session.get(Advertisement, provider_id)
    if row is None:
        row = Advertisement(provider_id=provider_id, created_at=now)
        session.add(row)
    row.provider_name = body.provider_name or row.provider_name or default_provider_name(provider_id)
    row.ip_address = body.ip_address
    row.country = body.country
    row.platform = body.platform
    row.cpu, row.memory_gb, row.storage_gb = body.resources.cpu, body.resources.memory, body.resources.storage
    row.pricing = body.pricing.model_dump(exclude_none=True) if body.pricing else None
    row.signed = signed
    row.updated_at = now
    session.flush()
    return row


def find_advertisements(
    session: Session,
    fresh_since: datetime,
    cpu: int | None = None,
    memory: int | None = None,
    storage: int | None = None,
    country: str | None = None,
    platform: str | None = None,
) -> list[Advertisement]:
    query = select(Advertisement).where(Advertisement.updated_at >= fresh_since)
    if cpu is not None:
        query = query.where(Advertisement.cpu >= cpu)
    if memory is not None:
        query = query.where(Advertisement.memory_gb >= memory)
    if storage is not None:
        query = query.where(Advertisement.storage_gb >= storage)
    if country is not None:
        query = query.where(Advertisement.country == country.upper())
    if platform is not None:
        query = query.where(Advertisement.platform == platform)
    return list(session.scalars(query.order_by(Advertisement.updated_at.desc(), Advertisement.provider_id)))


def delete_advertisement(session: Session, provider_id: str) -> bool:
    return bool(_deleted(session, delete(Advertisement).where(Advertisement.provider_id == provider_id)))


# --- hosts


def host_out(row: Host) -> HostOut:
    return HostOut(
        provider_id=row.provider_id,
        name=row.name,
        address=row.address,
        ssh_port=row.ssh_port,
        ssh_user=row.ssh_user,
        groups=row.groups,
        vars=row.vars,
        instance_id=row.instance_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def get_host(session: Session, provider_id: str, name: str) -> Host | None:
    return session.scalar(select(Host).where(Host.provider_id == provider_id, Host.name == name))


def count_hosts(session: Session, provider_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Host).where(Host.provider_id == provider_id)) or 0


HOST_FIELDS = ("address", "ssh_port", "ssh_user", "vars", "instance_id")


def upsert_host(session: Session, provider_id: str, body: HostIn, now: datetime) -> tuple[Host, bool]:
    """The caller's record of body.name, created or replaced; and whether anything changed."""
    row = get_host(session, provider_id, body.name)
    if (
        row is not None
        and row.groups == body.groups
        and all(getattr(row, field) == getattr(body, field) for field in HOST_FIELDS)
    ):
        return row, False
    if row is None:
        row = Host(provider_id=provider_id, name=body.name, created_at=now)
        session.add(row)
    elif row.groups != body.groups:
        row.group_rows = []
        session.flush()  # the old (host, group) rows go before rows with the same key come back
    row.address = body.address
    row.ssh_port = body.ssh_port
    row.ssh_user = body.ssh_user
    row.vars = body.vars
    row.instance_id = body.instance_id
    if row.groups != body.groups:
        row.group_rows = [HostGroup(group=group, position=i) for i, group in enumerate(body.groups)]
    row.updated_at = now
    session.flush()
    return row, True


def find_hosts(
    session: Session, group: str | None = None, provider_id: str | None = None, name: str | None = None
) -> list[Host]:
    query = select(Host)
    if group is not None:
        query = query.join(HostGroup).where(HostGroup.group == group)
    if provider_id is not None:
        query = query.where(Host.provider_id == provider_id)
    if name is not None:
        query = query.where(Host.name == name)
    return list(session.scalars(query.order_by(Host.name, Host.provider_id)))


def delete_host(session: Session, provider_id: str, name: str) -> bool:
    row = get_host(session, provider_id, name)
    if row is None:
        return False
    session.delete(row)
    return True


# --- expiry


def sweep(session: Session, now: datetime, advertisement_ttl_s: float) -> tuple[int, int]:
    """Delete expired advertisements and nonces past their window; (advertisements, nonces) removed."""
    cutoff = now - timedelta(seconds=advertisement_ttl_s)
    ads = _deleted(session, delete(Advertisement).where(Advertisement.updated_at < cutoff))
    nonces = _deleted(session, delete(SeenNonce).where(SeenNonce.expires_at < now))
    return ads, nonces


def _deleted(session: Session, statement: Delete) -> int:
    """How many rows a DELETE removed."""
    result = cast(CursorResult[Any], session.execute(statement))
    return int(result.rowcount or 0)
