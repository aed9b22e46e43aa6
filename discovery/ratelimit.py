"""Fixed-window request counters per key (client IP, provider id), in memory with a hard size bound.

The Golem server kept one list per IP forever. Here a counter lives one window (TTLCache drops it after),
and at most `max_keys` live at once: past that the least recently used are dropped, so a flood of new
addresses costs bounded memory and, at worst, resets some counters early.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

WINDOW_S = 60.0


@dataclass
class _Window:
    started: float
    count: int


class RateLimiter:
    def __init__(self, per_window: int, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_window
        self._clock = clock
        self._windows: TTLCache[str, _Window] = TTLCache(maxsize=max_keys, ttl=WINDOW_S, timer=clock)
        self._lock = threading.Lock()

    def hit(self, key: str) -> int | None:
        """Count one request; None when allowed, else the whole seconds until the key's window ends."""
        with self._lock:
            now = self._clock()
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(now, 1)
                return None
            if window.count >= self._limit:
                return max(1, math.ceil(window.started + WINDOW_S - now))
            window.count += 1
            return None

    def __len__(self) -> int:
        with self._lock:
            self._windows.expire()
            return len(self._windows)
