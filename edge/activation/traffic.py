"""Counting customer traffic for safe activation, off the request path.

The router only bumps an in-memory counter: the legacy paths that legacy and setup tenants'
customers request (deep links), and the new portal's responses to setup tenants (the
preview, the watch's baseline) and to tenants in their watch window after activation. A
background task adds the counts to the store every ``[store].flush_interval`` seconds in
one round trip, so every instance contributes, and refreshes which tenants are watched. The
transition insight's counts (referrers, legacy hits, shadow parity) go in the same round trip.

Only tenants with a routing key are written (a tenant in the default ``legacy`` mode has
none until it moves to setup or one is set by hand: ``edge tenant set TENANT legacy`` writes
nothing for it): made-up ids never create keys. The store's footprint is bounded per such
tenant (docs/limits.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVarTuple

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.activation.referrers import Referrers
from edge.activation.shadow import Shadow
from edge.config import Settings
from edge.core.background import Background
from edge.modes import ModeStore, StoreUnavailable
from edge.modes.traffic import MAX_PATH, TrafficCounts, status_class

log = logging.getLogger("edge.traffic")

# Distinct keys held between two flushes; beyond it new ones are dropped (and counted).
MAX_PENDING = 10_000

Key = TypeVarTuple("Key")


def normalise(path: str) -> str | None:
    """The form a deep link is remembered in: repeated slashes folded; None to drop it."""
    if len(path) > MAX_PATH:
        return None
    while "//" in path:
        path = path.replace("//", "/")
    return path


class _Pending(dict[tuple[*Key], int], Generic[*Key]):
    """Counts by key between two flushes, for at most ``limit`` distinct keys; past it a new key
    is dropped, and counted as dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = MAX_PENDING
        self.dropped = 0

    def add(self, *key: *Key) -> None:
        """On the request path: one dict operation (the arguments are the key)."""
        count = self.get(key)
        if count is not None:
            self[key] = count + 1
        elif len(self) < self.limit:
            self[key] = 1
        else:
            self.dropped += 1

    def take(self) -> dict[tuple[*Key], int]:
        taken = dict(self)
        self.clear()
        return taken


class Traffic(Collector):
    def __init__(
        self,
        store: ModeStore,
        settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        keyed: Callable[[str], bool] = lambda tenant: True,
        shadow: Shadow | None = None,
    ) -> None:
        """``keyed``: whether a tenant has a routing key, as far as is known without I/O (the
        mode cache's); the flush asks the store in any case. ``shadow``: None when off."""
        self.store = store
        self.referrers = Referrers(settings, keyed)
        self.shadow = shadow
        self.keep = settings.policy.deep_links
        self.interval = settings.store.flush_interval
        self.window = timedelta(seconds=settings.policy.watch_window)
        self.clock = clock
        # Active tenants inside their watch window, as of the last refresh.
        self.watched: frozenset[str] = frozenset()
        self._deep_links = _Pending[str, str]()
        self._responses = _Pending[str, str, int]()
        self._unwritten = 0  # counted requests a failed flush dropped
        # Bound methods, not wrappers: the router's call is the counter's, with no call between.
        # deep_link(tenant, path): a legacy-portal GET answered 2xx.
        self.deep_link: Callable[[str, str], None] = self._deep_links.add
        # response(tenant, phase, status): a new-portal response in setup or active.
        self.response: Callable[[str, str, int], None] = self._responses.add
        self._background = Background("traffic flush")
        self._failing = False

    @property
    def max_pending(self) -> int:
        """Distinct keys held between two flushes, each of deep links and responses."""
        return self._deep_links.limit

    @max_pending.setter
    def max_pending(self, limit: int) -> None:
        self._deep_links.limit = self._responses.limit = limit

    @property
    def dropped(self) -> int:
        """Requests not counted: too many distinct keys, or a failed flush."""
        return self._deep_links.dropped + self._responses.dropped + self._unwritten

    def take(self) -> TrafficCounts:
        """What was counted since the last take, aggregated for the store."""
        deep_links, responses = self._deep_links.take(), self._responses.take()
        counts = TrafficCounts()
        for (tenant, raw_path), count in deep_links.items():
            path = normalise(raw_path)
            if path is not None:
                paths = counts.deep_links.setdefault(tenant, {})
                paths[path] = paths.get(path, 0) + count
        for (tenant, phase, status), count in responses.items():
            name = status_class(status)
            if name is not None:
                classes = counts.responses.setdefault(tenant, {}).setdefault(phase, {})
                classes[name] = classes.get(name, 0) + count
        counts.referrers, counts.legacy_hits = self.referrers.take()
        if self.shadow is not None:
            counts.parity = self.shadow.take()
        counts.at = self.clock()
        return counts

    async def flush(self) -> None:
        """Add the counts to the store and refresh the watched tenants.

        Counts that cannot be written are dropped: they are statistics, and holding them
        through a long outage would hold memory without bound.
        """
        counts = self.take()
        try:
            if counts:
                counts = await self._keyed(counts)
            if counts:
                await self.store.add_traffic(counts, self.keep)
                counts = TrafficCounts()  # written
            activated = await self.store.activations(self.clock() - self.window)
        except StoreUnavailable as exc:
            self._unwritten += counts.requests()
            if not self._failing:
                log.warning("traffic counts could not be written, dropping them: %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("traffic counts are written again")
        self._failing = False
        self.watched = frozenset(activated)

    async def _keyed(self, counts: TrafficCounts) -> TrafficCounts:
        """The counts of the tenants that have a routing key: an id anyone can make up never
        creates a key in the store (one MGET a flush, for the tenants counted since the last)."""
        tenants = counts.tenants()
        modes = await self.store.get_many(tenants)
        return counts.only({tenant for tenant, mode in zip(tenants, modes, strict=True) if mode})

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "edge_traffic_uncounted",
            "Requests left out of the deep-link and watch counts: too many distinct ones "
            "between two flushes, or the store unreachable at a flush.",
            value=self.dropped,
        )
        yield CounterMetricFamily(
            "edge_referrers_uncounted",
            "Legacy-front requests whose Referer was left out: too many distinct outside pages "
            "between two flushes.",
            value=self.referrers.dropped,
        )

    async def start(self) -> None:
        if self.shadow is not None:
            await self.shadow.start()
        self._background.start(self._run)

    async def stop(self) -> None:
        """Stop the task and write what is left."""
        if self.shadow is not None:
            await self.shadow.stop()
        await self._background.stop()
        await self.flush()

    async def _run(self) -> None:
        while True:
            await self.flush()
            await asyncio.sleep(self.interval)
