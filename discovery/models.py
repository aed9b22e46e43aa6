"""The registry's tables: advertisements, hosts (with their groups) and the nonces seen in signed requests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite (which keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}  # noqa: RUF012


class Advertisement(Base):
    __tablename__ = "advertisements"

    provider_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    provider_name: Mapped[str] = mapped_column(String(64))
    ip_address: Mapped[str] = mapped_column(String(45))
    country: Mapped[str] = mapped_column(String(2), index=True)
    platform: Mapped[str | None] = mapped_column(String(32))
    cpu: Mapped[int] = mapped_column(Integer)
    memory_gb: Mapped[int] = mapped_column(Integer)
    storage_gb: Mapped[int] = mapped_column(Integer)
    pricing: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # False only for the Golem nodes' placeholder signatures (DISCOVERY_ACCEPT_UNSIGNED_PROVIDERS).
    signed: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(index=True)


class Host(Base):
    __tablename__ = "hosts"
    __table_args__ = (UniqueConstraint("provider_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(63))
    address: Mapped[str] = mapped_column(String(253))
    ssh_port: Mapped[int] = mapped_column(Integer)
    ssh_user: Mapped[str | None] = mapped_column(String(32))
    vars: Mapped[dict[str, Any]]
    instance_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    group_rows: Mapped[list[HostGroup]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="HostGroup.position"
    )

    @property
    def groups(self) -> list[str]:
        return [row.group for row in self.group_rows]


class HostGroup(Base):
    """One row per (host, group), so `?group=` is an indexed join on every database."""

    __tablename__ = "host_groups"

    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True)
    group: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)


class SeenNonce(Base):
    """A nonce is remembered while its request's timestamp is inside the signature window (replay guard)."""

    __tablename__ = "seen_nonces"

    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
