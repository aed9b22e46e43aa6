"""What every request handler of one registry shares: settings, database, clock and rate limiters."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fastapi import Request
from sqlalchemy.orm import Session

from discovery.ratelimit import RateLimiter
from discovery.settings import RegistrySettings
from engine.db import Database


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


def session(request: Request) -> Iterator[Session]:
    """One session per request: committed when the handler succeeds, rolled back when it raises."""
    with registry(request).db.session() as db_session:
        yield db_session
