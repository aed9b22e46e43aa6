"""API tokens for /v1: who is calling (a `Principal`), with a role and quotas.

A token is shown once, when it is made (`provisioner tokens create`); the store keeps its SHA-256 digest only, so a
copy of the database lets nobody in. Tokens are random (256 bits), so an unsalted digest is enough, and a lookup by
digest takes no time that depends on how much of a guess was right. The operator token of the settings
(PROVISIONER_OPERATOR_TOKEN) is the built-in admin, named "operator".
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from engine.db import Database
from engine.errors import Conflict, NotFound, ProvisionerError
from engine.models import VISA_OWNER, ApiToken, TokenRole, utcnow

TOKEN_PREFIX = "pvt_"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
BUILT_IN_ADMIN = "operator"  # the settings' PROVISIONER_OPERATOR_TOKEN
RESERVED_NAMES = frozenset({BUILT_IN_ADMIN, VISA_OWNER, "golem", "anonymous"})


@dataclass(frozen=True)
class Quotas:
    """A token's limits on what its VMs may hold at once; None: no limit."""

    max_vms: int | None = None
    max_vcpus: int | None = None
    max_memory_mb: int | None = None
    max_disk_gb: int | None = None


@dataclass(frozen=True)
class Principal:
    """Who a /v1 request comes from."""

    name: str
    role: TokenRole
    quotas: Quotas = Quotas()

    @property
    def is_admin(self) -> bool:
        return self.role == TokenRole.ADMIN

    @property
    def may_write(self) -> bool:
        return self.role != TokenRole.VIEWER


ADMIN = Principal(BUILT_IN_ADMIN, TokenRole.ADMIN)


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: TokenRole
    quotas: Quotas
    created_at: str
    revoked: bool


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, name: str, role: TokenRole, quotas: Quotas = Quotas()) -> str:
        """A new token named `name`; the token itself, which nothing keeps."""
        if not NAME.match(name) or name in RESERVED_NAMES:
            raise ProvisionerError(
                f"invalid token name {name!r}: 1-64 of a-z 0-9 _ . - (starting with a letter or digit), and not one "
                f"of {', '.join(sorted(RESERVED_NAMES))}"
            )
        for field, value in vars(quotas).items():
            if value is not None and value < 0:
                raise ProvisionerError(f"{field} must not be negative")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = ApiToken(id=str(uuid.uuid4()), name=name, role=role.value, token_hash=digest(token), **vars(quotas))
        try:
            with self._db.write() as session:
                session.add(row)
        except IntegrityError:
            raise Conflict(f"a token named {name!r} exists already") from None
        return token

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a token that was made and not revoked; None for any other string."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self._db.session() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest(token)))
            if row is None or row.revoked_at is not None:
                return None
            return Principal(row.name, TokenRole(row.role), _quotas(row))

    def list(self) -> list[TokenInfo]:
        with self._db.session() as session:
            rows = session.scalars(select(ApiToken).order_by(ApiToken.created_at))
            return [
                TokenInfo(row.name, TokenRole(row.role), _quotas(row), row.created_at.isoformat(), bool(row.revoked_at))
                for row in rows
            ]

    def revoke(self, name: str) -> None:
        """The token stops working (within the API guard's recheck time); its row stays (the audit log names it)."""
        with self._db.write() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.name == name))
            if row is None:
                raise NotFound(f"no token named {name!r}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()


def _quotas(row: ApiToken) -> Quotas:
    return Quotas(row.max_vms, row.max_vcpus, row.max_memory_mb, row.max_disk_gb)
