"""A per-client-address rate limit for the unauthenticated Golem listener: a token bucket per address."""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TTLCache

MAX_CLIENTS = 100_000  # addresses remembered at once (an address idle for a minute is forgotten: its bucket is full)


class RateLimit:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._clock = clock
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(MAX_CLIENTS, ttl=60.0, timer=clock)

    def take(self, client: str) -> float:
        """0 when the client may go on (a token taken), else the seconds until it may."""
        now = self._clock()
        tokens, then = self._buckets.get(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[client] = (tokens - 1, now)
        return 0.0
