"""Descriptions of listed instances, kept by what they are made of: a list at 1,000 describes again only those that
changed. A key holds the instance's id and `updated_at` (any change to its row dates it anew) and whatever else the
description reads (its state); lists share the objects, so nothing may change one after it is made."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from cachetools import LRUCache

T = TypeVar("T")


def described_on(state: Any, name: str) -> Described[Any]:
    """The app's cache of that name (on its `state`: one service's instances, never another app's in the process)."""
    cache = getattr(state, name, None)
    if cache is None:
        cache = Described()
        setattr(state, name, cache)
    return cache


class Described(Generic[T]):
    def __init__(self, maxsize: int = 20_000) -> None:
        self._made: LRUCache[Hashable, T] = LRUCache(maxsize=maxsize)
        self._lock = threading.Lock()  # list routes run in the threadpool

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            made = self._made.get(key)
        if made is None:
            made = make()
            with self._lock:
                self._made[key] = made
        return made
