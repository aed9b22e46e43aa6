"""What every request handler of one registry shares: settings, database, clock and rate limiters."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from fastapi import Request
from sqlalchemy.orm import Session

from common.db import Database
from discovery.ratelimit import RateLimiter
from discovery.settings import RegistrySettings

T = TypeVar("T")


@dataclass
class Registry:
    settings: RegistrySettings
    db: Database
    clock: Callable[[], float] = time.time  # Unix seconds; tests move it
    per_client: RateLimiter = field(init=False)
    per_provider: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        limit = self.settings.rate_limit_per_minute
        self.per_client = RateLimiter(limit, clock=self.clock)
        self.per_provider = RateLimiter(limit, clock=self.clock)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def fresh_since(self) -> datetime:
        """Advertisements updated before this are expired, whether or not the sweeper has run yet."""
        return self.now() - timedelta(seconds=self.settings.advertisement_ttl_s)


def registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def committed(db: Session, answer: T) -> T:
    """Commit in the handler's own thread, before FastAPI's response validation takes another pool thread."""
    db.commit()
    return answer


async def session(request: Request) -> AsyncIterator[Session]:
    """One session per request: committed when the handler succeeds, rolled back when it raises.

    A transaction holds SQLite's write lock from its first statement (BEGIN IMMEDIATE) to its end, so it must
    never wait for a pool thread: in a burst every pool thread can be waiting for that lock. Handlers end it
    in their own thread (`committed`); this async teardown (on the event loop, no pool thread) commits what is
    left and rolls back after an error.
    """
    db_session = registry(request).db.sessions()
    try:
        yield db_session
        db_session.commit()
    except BaseException:
        db_session.rollback()
        raise
    finally:
        db_session.close()
