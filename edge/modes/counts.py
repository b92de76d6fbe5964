"""Tenants per stored mode, counted in one pass over every key and reused for a while."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from edge.modes.base import ModeStore

COUNTS_MAX_AGE = 30.0


@dataclass(frozen=True)
class Counted:
    counts: dict[str, int]  # legacy, setup, active, invalid
    at: datetime

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class ModeCounter:
    """A count costs a SCAN of every key (about a second per 100,000 tenants on Redis), so
    concurrent callers share one and it is reused for ``max_age`` seconds."""

    def __init__(self, store: ModeStore, max_age: float = COUNTS_MAX_AGE) -> None:
        self.store = store
        self.max_age = max_age
        self._lock = asyncio.Lock()
        self._last: tuple[float, Counted] | None = None

    async def count(self) -> Counted:
        async with self._lock:
            if self._last is None or time.monotonic() - self._last[0] >= self.max_age:
                counted = Counted(await self.store.count_modes(), datetime.now(UTC))
                self._last = (time.monotonic(), counted)
            return self._last[1]

    def forget(self) -> None:
        """Count afresh next time (after a change made here)."""
        self._last = None
