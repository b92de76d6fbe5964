"""What the mode cache reports: its counts, for /metrics, and the changes it finds in the
store, for the log."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from edge.core.tenants import Mode
from edge.modes.base import ModeStore, StoreUnavailable

log = logging.getLogger("edge.modes")

# Changes found in the store logged one by one, at most this many a resync or pass; and
# writes Redis reported remembered for that, at most this many between two resyncs.
_LOGGED_MAX = 1_000


@dataclass(slots=True)
class ResyncTotals:
    runs: int = 0
    seconds: float = 0.0
    keys: int = 0


@dataclass(slots=True)  # hits += 1 on every request
class CacheStats:
    hits: int = 0
    misses: int = 0
    store_errors: int = 0
    reconnects: int = 0
    invalid_values: int = 0
    events: int = 0  # edge's change events received
    invalidations: int = 0  # tenants named in Redis's invalidation messages (a flush: one)
    resync_changes: int = 0  # changes a resync found: writes no notice reported
    last_resync: float | None = None  # time.monotonic() of the last successful resync
    resyncs: dict[str, ResyncTotals] = field(
        default_factory=lambda: {"periodic": ResyncTotals(), "reconnect": ResyncTotals()}
    )

    def age(self) -> float | None:
        """Seconds since the last successful resync, None before the first."""
        return None if self.last_resync is None else time.monotonic() - self.last_resync

    def resynced(self, kind: str, started: float, keys: int) -> None:
        totals = self.resyncs[kind]
        totals.runs += 1
        totals.seconds += time.monotonic() - started
        totals.keys += keys


class CacheLog:
    """What the cache logs: stored values that are not modes, once each, and the changes a
    resync or a pass finds in the store, a few hundred a pass at most, then a count.

    Cached tenants Redis reported written are remembered with their mode then, since the last
    resync and before it. A change made through edge is logged by the instance that made it,
    and its event follows at once; one that no event followed by the next resync was made
    behind edge's back, and each instance that had the tenant logs it then.
    """

    def __init__(self) -> None:
        self.invalid: dict[str, str] = {}  # tenant → the invalid value last warned about
        self._written: dict[str, Mode | None] = {}
        self._written_before: dict[str, Mode | None] = {}
        self._logs_left, self._not_logged = _LOGGED_MAX, 0

    def invalid_value(self, tenant: str, raw: str, stats: CacheStats) -> None:
        if self.invalid.get(tenant) == raw:
            return
        self.invalid[tenant] = raw
        stats.invalid_values += 1
        log.warning("%s: the stored mode %r is not a mode; refusing its requests", tenant, raw)

    def written(self, tenant: str, before: Mode | None) -> None:
        """Redis reported a write to a cached tenant's key."""
        if len(self._written) < _LOGGED_MAX:
            self._written.setdefault(tenant, before)

    def made_through_edge(self, tenant: str) -> None:
        """An event followed: its maker logged it."""
        self._written.pop(tenant, None)
        self._written_before.pop(tenant, None)

    async def log_raw_edits(self, store: ModeStore, stats: CacheStats) -> None:
        """Log the writes Redis reported before the last resync that no event followed:
        edits behind edge's back, which have no maker to log them."""
        judged, self._written_before, self._written = self._written_before, self._written, {}
        if not judged:
            return
        try:
            values = await store.get_many(list(judged))
        except StoreUnavailable:
            stats.store_errors += 1
            return
        for (tenant, before), raw in zip(judged.items(), values, strict=True):
            self.log(tenant, before, raw)

    def log(self, tenant: str, before: Mode | None, raw: str | None) -> None:
        """Log a change found in the store, if it is one: a raw edit (redis-cli SET) or an
        event this process missed."""
        after = Mode.parse(raw)
        if after is before and (after is not None or self.invalid.get(tenant) == raw):
            return
        if self._logs_left:
            self._logs_left -= 1
            log.info(
                "mode changed in the store, found by resync",
                extra={"tenant": tenant, "from": before, "to": after, "via": "resync"},
            )
        else:
            self._not_logged += 1

    def log_left_out(self) -> None:
        if self._not_logged:
            log.info("%d more modes changed in the store, not logged one by one", self._not_logged)
        self._logs_left, self._not_logged = _LOGGED_MAX, 0
