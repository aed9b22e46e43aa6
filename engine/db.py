"""The service's database: common.db with the engine's own schema migrations (engine/migrations)."""

from __future__ import annotations

from pathlib import Path

from common import db

MIGRATIONS = Path(__file__).parent / "migrations"


class Database(db.Database):
    def __init__(self, url: str) -> None:
        super().__init__(url, MIGRATIONS)
