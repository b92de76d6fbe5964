"""The per-process mode cache in front of the store, after lua-resty-mlcache.

A cached tenant never waits on the store: events apply changes at once, a periodic resync
picks up raw edits (``redis-cli SET``) and anything an event missed, and while the store is
down the last known modes keep serving. A miss costs one fetch however many requests wait.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import logging
import time
from dataclasses import dataclass
from typing import Final, Literal

from edge.background import Background
from edge.modes.base import ModeEvent, ModeStore, StoreUnavailable
from edge.policy import Mode

log = logging.getLogger("edge.modes")

_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 1.0


class _Missing(enum.Enum):
    MISSING = "missing"


MISSING: Final = _Missing.MISSING
Missing = Literal[_Missing.MISSING]


@dataclass(slots=True)  # hits += 1 on every request
class CacheStats:
    hits: int = 0
    misses: int = 0
    store_errors: int = 0
    reconnects: int = 0
    invalid_values: int = 0
    last_resync: float | None = None  # time.monotonic() of the last successful resync

    def age(self) -> float | None:
        """Seconds since the last successful resync, None before the first."""
        return None if self.last_resync is None else time.monotonic() - self.last_resync


class ModeCache:
    def __init__(
        self, store: ModeStore, *, resync_interval: float = 2.0, max_size: int = 1_000_000
    ) -> None:
        self.store = store
        self.resync_interval = resync_interval
        self.max_size = max_size
        self.stats = CacheStats()
        self.ready = False  # the store has answered at least once
        self.listening = False  # the event subscription is in place
        # Insertion order is eviction order. None: the stored value is not a mode.
        self._modes: dict[str, Mode | None] = {}
        # Per tenant, the event count when an event last set it: a read that started
        # before then is older than the event and must not overwrite it.
        self._event_marks: dict[str, int] = {}
        self._events_applied = 0
        self._invalid: dict[str, str] = {}  # tenant → the invalid value last warned about
        self._loading: dict[str, asyncio.Task[Mode | None]] = {}
        self._background = Background("mode cache")
        self._resync_failing = False

    def __len__(self) -> int:
        return len(self._modes)

    def counts(self) -> collections.Counter[Mode | None]:
        """How many cached tenants are in each mode (None: the stored value is not a mode)."""
        return collections.Counter(self._modes.values())

    def cached(self, tenant: str) -> Mode | Missing | None:
        """The cached mode (None: invalid stored value), or MISSING. No I/O."""
        try:
            mode = self._modes[tenant]  # a subscript costs less than a .get() call
        except KeyError:
            self.stats.misses += 1
            return MISSING
        self.stats.hits += 1
        return mode

    async def load(self, tenant: str) -> Mode | None:
        """The mode, fetched once however many callers wait; raises StoreUnavailable."""
        mode = self._modes.get(tenant, MISSING)
        if mode is not MISSING:
            return mode
        task = self._loading.get(tenant)
        if task is None:
            task = asyncio.create_task(self._fetch(tenant, self._events_applied))
            self._loading[tenant] = task
            task.add_done_callback(functools.partial(self._loaded, tenant))
        # Shielded: a caller that goes away must not cancel the fetch for the others.
        return await asyncio.shield(task)

    async def resync(self) -> bool:
        """Re-read every cached tenant; on failure keep the last known modes."""
        tenants = list(self._modes)
        mark = self._events_applied
        try:
            if tenants:
                values = await self.store.get_many(tenants)
            else:
                await self.store.ping()
                values = []
        except StoreUnavailable as exc:
            self.stats.store_errors += 1
            if not self._resync_failing:
                log.warning("mode resync failed, serving the last known modes: %s", exc)
            self._resync_failing = True
            return False
        for tenant, raw in zip(tenants, values, strict=True):
            if tenant in self._modes and self._event_marks.get(tenant, -1) <= mark:
                before = self._modes[tenant]
                if (after := self._put(tenant, raw)) is not before:
                    # A raw edit (redis-cli SET), or an event this process missed.
                    log.info(
                        "mode changed in the store, found by resync",
                        extra={"tenant": tenant, "from": before, "to": after, "via": "resync"},
                    )
        if self._resync_failing:
            log.info("mode resync works again")
        self._resync_failing = False
        self.ready = True
        self.stats.last_resync = time.monotonic()
        return True

    async def start(self) -> None:
        self._background.start(self._listen, self._resync_loop)

    async def stop(self) -> None:
        await self._background.stop()
        self.listening = False

    async def _fetch(self, tenant: str, mark: int) -> Mode | None:
        try:
            raw = await self.store.get(tenant)
        except StoreUnavailable:
            self.stats.store_errors += 1
            raise
        self.ready = True
        if self._event_marks.get(tenant, -1) > mark:
            # An event set it while we read: the event is at least as new.
            return self._modes[tenant]
        return self._put(tenant, raw)

    def _loaded(self, tenant: str, task: asyncio.Task[Mode | None]) -> None:
        if self._loading.get(tenant) is task:
            del self._loading[tenant]
        if not task.cancelled():
            task.exception()  # marks it retrieved even when every waiter has gone

    def _apply(self, event: ModeEvent) -> None:
        if event.mode is None:
            self._note_invalid(event.tenant, "(an invalid mode in an event)")
        else:
            self._invalid.pop(event.tenant, None)
        self._set(event.tenant, event.mode)
        log.debug("mode event applied", extra={"tenant": event.tenant, "mode": event.mode})
        self._events_applied += 1
        self._event_marks[event.tenant] = self._events_applied

    def _put(self, tenant: str, raw: str | None) -> Mode | None:
        mode = Mode.parse(raw)
        if mode is None:
            self._note_invalid(tenant, str(raw))
        else:
            self._invalid.pop(tenant, None)
        self._set(tenant, mode)
        return mode

    def _set(self, tenant: str, mode: Mode | None) -> None:
        if tenant not in self._modes and len(self._modes) >= self.max_size:
            oldest = next(iter(self._modes))
            del self._modes[oldest]
            self._event_marks.pop(oldest, None)
            self._invalid.pop(oldest, None)
        self._modes[tenant] = mode

    def _note_invalid(self, tenant: str, raw: str) -> None:
        if self._invalid.get(tenant) == raw:
            return
        self._invalid[tenant] = raw
        self.stats.invalid_values += 1
        log.warning("%s: the stored mode %r is not a mode; refusing its requests", tenant, raw)

    async def _listen(self) -> None:
        delay = _MIN_BACKOFF
        subscribed_before = False
        failing = False

        async def on_subscribed() -> None:
            nonlocal delay, subscribed_before, failing
            if subscribed_before:
                self.stats.reconnects += 1
                log.info("mode events: subscribed again")
            subscribed_before = True
            failing = False
            delay = _MIN_BACKOFF
            self.listening = True
            await self.resync()  # events may have been missed while not subscribed

        while True:
            try:
                async for event in self.store.events(on_subscribed):
                    self._apply(event)
                return  # the store was closed
            except StoreUnavailable as exc:
                self.stats.store_errors += 1
                if not failing:
                    log.warning("mode events: no subscription, retrying: %s", exc)
                failing = True
            finally:
                self.listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            await self.resync()
