"""Handing out VMIDs: round-robin through the configured range, never an id in the store or in Proxmox."""

from __future__ import annotations

from collections.abc import Container, Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.models import Instance

WINDOW = 64  # ids checked against the store per query


class VmidAllocator:
    """Starts after the highest id stored and continues after the last one handed out, wrapping around.

    Not thread-safe: the create intake's single writer thread is its only user.
    """

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self._last: int | None = None

    def free_ids(self, session: Session, in_proxmox: Container[int]) -> Iterator[int]:
        """The free ids in hand-out order; taking one hands it out. Ends when the range is full."""
        if self._last is None:
            highest = session.scalar(select(func.max(Instance.id)).where(Instance.id.between(self.low, self.high)))
            self._last = highest or self.low - 1
        start, span = self._last, self.high - self.low + 1
        for first in range(1, span + 1, WINDOW):
            steps = range(first, min(first + WINDOW, span + 1))
            window = [self.low + (start - self.low + step) % span for step in steps]
            stored = set(session.scalars(select(Instance.id).where(Instance.id.in_(window))))
            for vmid in window:
                if vmid not in stored and vmid not in in_proxmox:
                    self._last = vmid
                    yield vmid
