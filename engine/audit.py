"""The audit log: who did what to what, with which parameters (secrets removed), and what they were answered.

Appended, never changed. Entries come from the HTTP layers (every authenticated request that may change something,
refused or not) and from the CLI (tokens). A writer thread stores them in groups (engine/group_commit.py), so a
burst of creates costs one transaction per group, and a request's entry is stored before its handler returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select

from engine.db import Database
from engine.group_commit import GroupCommitter
from engine.models import AuditEntry, utcnow

# Parameters never kept, at any depth: a key naming a secret, and what VISA's create may carry a secret in.
SECRET_KEY = re.compile(r"token|secret|password|passwd|private|credential|user_?data|boot_?command", re.IGNORECASE)
REMOVED = "(removed)"
MAX_PARAMS = 16 * 1024  # characters of parameters kept per entry; a longer body is summarised


@dataclass(frozen=True)
class Entry:
    actor: str
    action: str
    target: str | None
    status: int
    params: dict[str, Any] = field(default_factory=dict)
    client: str | None = None
    at: datetime = field(default_factory=utcnow)


def without_secrets(value: Any) -> Any:
    """value with the values of every key that names a secret replaced."""
    if isinstance(value, dict):
        return {k: REMOVED if SECRET_KEY.search(str(k)) else without_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_secrets(item) for item in value]
    return value


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._writer: GroupCommitter[Entry, None] = GroupCommitter(self._store, "audit-writer")

    def start(self) -> None:
        self._writer.start()

    def stop(self) -> None:
        self._writer.stop()

    async def record(self, entry: Entry) -> None:
        await self._writer.commit(entry)

    def record_now(self, entry: Entry) -> None:
        """From a process with no writer thread (the CLI)."""
        self._store([entry])

    def _store(self, entries: list[Entry]) -> list[None]:
        rows = [
            {
                "at": entry.at,
                "actor": entry.actor,
                "action": entry.action,
                "target": entry.target,
                "params": _bounded(without_secrets(entry.params)),
                "status": entry.status,
                "client": entry.client,
            }
            for entry in entries
        ]
        with self._db.session() as session:
            session.execute(insert(AuditEntry), rows)
        return [None] * len(entries)

    def entries(
        self,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first; `before_id` pages on (the last id of the previous page)."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if actor is not None:
            query = query.where(AuditEntry.actor == actor)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        if target is not None:
            query = query.where(AuditEntry.target == target)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        if before_id is not None:
            query = query.where(AuditEntry.id < before_id)
        with self._db.session() as session:
            return list(session.scalars(query))


def _bounded(params: dict[str, Any]) -> dict[str, Any]:
    text = repr(params)
    if len(text) <= MAX_PARAMS:
        return params
    return {"summary": f"{len(text)} characters of parameters, not kept", "keys": sorted(map(str, params))[:50]}
