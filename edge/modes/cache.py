"""The per-process mode cache in front of the store, after lua-resty-mlcache.

A cached tenant never waits on the store. The store says whose mode keys were written: edge's
own events, and on Redis 6 and later Redis's invalidation messages for every write, raw
``redis-cli`` edits included. Those tenants are forgotten at once and their next request
reads the store; a miss costs one read however many requests wait for it.

Nothing is guessed when those notices stop (the subscription lost): the modes cached keep
serving while the store cannot be reached, and once the notices flow again nothing cached is
trusted until it has been read again. A request reads its tenant afresh (the last known mode
answers only if the store fails it), and a pass reads the rest back in paced chunks. The
periodic resync is a safety net that reads a bounded slice of the cache each interval, the
next in turn, whatever the cache's size; only while the store does not report writes (the
subscription down, or a Redis without tracking) does it read every cached tenant each
interval, as the only way to keep the resync bound.

The entries are bounded (edge.modes.entries): tenants with a key up to ``max_size``, tenants
without one in a small negative cache with a TTL of its own, never read in bulk.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice

from edge.core.background import Background
from edge.core.tenants import Mode
from edge.modes.base import ModeEvent, ModeStore, StoreNotice, StoreUnavailable
from edge.modes.cache_report import CacheLog, CacheStats, ResyncTotals
from edge.modes.entries import MISSING, Entries, Missing

log = logging.getLogger("edge.modes")

_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
# The reconnect pass: keys a read, and seconds between two reads.
PASS_CHUNK = 500
PASS_PAUSE = 0.01
# Missed tenants read together: at most this many a read, this many reads at a time.
READ_BATCH = 500
READERS = 4
# Tenants noticed while reads were in flight, remembered up to this many; past it every read
# in flight is treated as older than its tenant's last notice.
_NOTICED_MAX = 100_000

__all__ = ["MISSING", "CacheStats", "Missing", "ModeCache", "ResyncTotals"]


def _retrieved(loading: asyncio.Future[Mode | None]) -> None:
    """Marks a read's failure as seen even when every caller has gone."""
    if not loading.cancelled():
        loading.exception()


class ModeCache:
    def __init__(
        self,
        store: ModeStore,
        *,
        resync_interval: float = 2.0,
        max_size: int = 1_000_000,
        negative_size: int = 10_000,
        negative_ttl: float = 60.0,
        resync_keys: int = 1_000,
    ) -> None:
        self.store = store
        self.resync_interval = resync_interval
        self.negative_ttl = negative_ttl
        self.resync_keys = resync_keys
        self.stats = CacheStats()
        self.ready = False  # the store has answered at least once
        self.listening = False  # the subscription to the store's notices is in place
        self.tracked = False  # the store reports every write to a mode key
        self._entries = Entries(max_size, negative_size)
        self._young = self._entries.young  # the request path's one look-up
        self._max_size = max_size
        # Last known modes not trusted since the notices stopped: read again by the pass
        # (those with a key), served only when the store cannot answer for them.
        self._unverified: dict[str, Mode | None] = {}
        self._unverified_absent: set[str] = set()
        self._verify_wanted = asyncio.Event()
        self._log = CacheLog()
        self._invalid = self._log.invalid  # tenant → the invalid value last warned about
        self._loading: dict[str, asyncio.Future[Mode | None]] = {}
        self._wanted: dict[str, None] = {}  # missed tenants not read yet, oldest first
        self._readers = 0
        self._reader_tasks: set[asyncio.Task[None]] = set()
        # A read that started before a notice about its tenant must not be cached: each
        # notice moves the epoch on and, while reads are in flight, marks its tenants.
        self._epoch = 0
        self._stale_before = 0  # reads that started before this epoch are all stale
        self._noticed: dict[str, int] = {}
        self._reads = 0
        self._rotation: list[str] = []  # the periodic resync's turn through the cache
        self._rotation_at = 0
        self._background = Background("mode cache")
        self._resync_failing = False

    def __len__(self) -> int:
        return len(self._entries)

    def counts(self) -> collections.Counter[Mode | None]:
        """How many cached tenants are in each mode (None: the stored value is not a mode;
        a tenant without a key counts as legacy)."""
        counts = +self._entries.modes
        counts[Mode.LEGACY] += self._entries.absent
        return counts

    def kinds(self) -> dict[str, int]:
        """Cached entries by kind: a mode, an invalid value, no key; and the unverified ones."""
        invalid = self._entries.modes[None]
        return {
            "positive": self._entries.present - invalid,
            "invalid": invalid,
            "negative": self._entries.absent,
            "unverified": len(self._unverified) + len(self._unverified_absent),
        }

    def cached(self, tenant: str) -> Mode | Missing | None:
        """The cached mode (None: invalid stored value), or MISSING. No I/O."""
        try:
            mode = self._young[tenant]  # a subscript costs less than a .get() call
        except KeyError:
            return self._recall(tenant)
        self.stats.hits += 1
        return mode

    def keyed(self, tenant: str) -> bool:
        return not self._entries.is_absent(tenant)  # as cached, with a key: a set look-up

    def _recall(self, tenant: str) -> Mode | Missing | None:
        mode = self._entries.recall(tenant)
        if mode is MISSING:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return mode

    async def load(self, tenant: str) -> Mode | None:
        """The mode, read once however many callers wait; raises StoreUnavailable.

        The tenants missed meanwhile are read together, up to READ_BATCH a read and
        READERS reads at a time: a flood of unknown ids costs Redis a few commands per
        batch and never more connections than that.
        """
        mode = self._entries.get(tenant)
        if mode is not MISSING:
            return mode
        loading = self._loading.get(tenant)
        if loading is None:
            loading = self._loading[tenant] = asyncio.get_running_loop().create_future()
            loading.add_done_callback(_retrieved)
            self._wanted[tenant] = None
            if self._readers < READERS:
                self._readers += 1
                task = asyncio.create_task(self._read_wanted())
                self._reader_tasks.add(task)
                task.add_done_callback(self._reader_tasks.discard)
        # Shielded: a caller that goes away must not cancel the read for the others.
        return await asyncio.shield(loading)

    async def resync(self) -> bool:
        """Read the next slice of the cache and correct what differs; on failure keep the
        last known modes. False when the store could not be read."""
        started = time.monotonic()
        tenants = self._next_slice()
        with self._reading() as epoch:
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
                if self._fresh(tenant, epoch):
                    self._correct(tenant, raw)
        if self._resync_failing:
            log.info("mode resync works again")
        self._resync_failing = False
        self.ready = True
        self.stats.last_resync = time.monotonic()
        self.stats.resynced("periodic", started, len(tenants))
        # Absent entries expire only while the store answers: during an outage they are
        # the last known modes.
        for tenant in self._entries.expire(time.monotonic()):
            self._invalid.pop(tenant, None)
        self._forget_invalid_evicted()
        await self._log.log_raw_edits(self.store, self.stats)
        self._log.log_left_out()
        return True

    async def start(self) -> None:
        self._background.start(self._listen, self._resync_loop, self._verify_loop)

    async def stop(self) -> None:
        await self._background.stop()
        self.listening = False

    # Reads

    async def _read_wanted(self) -> None:
        try:
            while self._wanted:
                tenants = list(islice(self._wanted, READ_BATCH))
                for tenant in tenants:
                    del self._wanted[tenant]
                await self._read(tenants)
        finally:
            self._readers -= 1

    async def _read(self, tenants: list[str]) -> None:
        try:
            with self._reading() as epoch:
                try:
                    values = await self.store.get_many(tenants)
                except StoreUnavailable as exc:
                    self.stats.store_errors += 1
                    for tenant in tenants:  # the last known mode, where there is one
                        last = self._last_known(tenant)
                        self._answer(tenant, exc if last is MISSING else last)
                    return
                self.ready = True
                for tenant, raw in zip(tenants, values, strict=True):
                    if self._fresh(tenant, epoch):
                        self._unverified.pop(tenant, None)
                        self._unverified_absent.discard(tenant)
                        self._answer(tenant, self._put(tenant, raw))
                    else:  # noticed meanwhile: right for the callers, not for the cache
                        self._answer(tenant, Mode.parse(raw))
        finally:  # cancelled: nobody waits for ever
            for tenant in tenants:
                self._answer(tenant, StoreUnavailable("the read of the mode was cancelled"))

    def _answer(self, tenant: str, outcome: Mode | StoreUnavailable | None) -> None:
        loading = self._loading.pop(tenant, None)
        if loading is None or loading.done():
            return
        if isinstance(outcome, StoreUnavailable):
            loading.set_exception(outcome)
        else:
            loading.set_result(outcome)

    def _last_known(self, tenant: str) -> Mode | Missing | None:
        if tenant in self._unverified_absent:
            return Mode.LEGACY
        return self._unverified.get(tenant, MISSING)

    @contextmanager
    def _reading(self) -> Iterator[int]:
        """Around a read of the store: the epoch it started in."""
        self._reads += 1
        try:
            yield self._epoch
        finally:
            self._reads -= 1
            if not self._reads:
                self._noticed.clear()

    def _fresh(self, tenant: str, epoch: int) -> bool:
        """Whether a read that started in ``epoch`` is newer than every notice about it."""
        return epoch >= self._stale_before and self._noticed.get(tenant, 0) <= epoch

    def _put(self, tenant: str, raw: str | None) -> Mode | None:
        """Cache what the store holds for the tenant."""
        if raw is None:
            self._invalid.pop(tenant, None)
            ttl = self.negative_ttl
            if not (self.listening and self.tracked):  # then only expiry can find a new key
                ttl = min(ttl, self.resync_interval)
            self._entries.put_absent(tenant, time.monotonic() + ttl)
            return Mode.LEGACY
        mode = Mode.parse(raw)
        if mode is None:
            self._log.invalid_value(tenant, raw, self.stats)
        else:
            self._invalid.pop(tenant, None)
        self._entries.put(tenant, mode)
        return mode

    def _correct(self, tenant: str, raw: str | None) -> None:
        """Apply a resync's read of a cached tenant, if it differs from the entry."""
        before = self._entries.peek(tenant)
        if before is MISSING:  # evicted or noticed since
            return
        if raw is None:
            changed = not self._entries.is_absent(tenant)
        else:
            changed = self._entries.is_absent(tenant) or Mode.parse(raw) is not before
            changed = changed or (before is None and self._invalid.get(tenant) != raw)
        if changed:
            self._log.log(tenant, before, raw)
            self._put(tenant, raw)
            self.stats.resync_changes += 1

    def _next_slice(self) -> list[str]:
        """The tenants the periodic resync reads now: every cached tenant with a key while
        the store does not report writes, else the next ``resync_keys`` of them in turn."""
        if not (self.listening and self.tracked):
            return self._entries.present_tenants()
        if self._rotation_at >= len(self._rotation):
            self._rotation, self._rotation_at = self._entries.present_tenants(), 0
        end = self._rotation_at + self.resync_keys
        turn = self._rotation[self._rotation_at : end]
        self._rotation_at = end
        return [tenant for tenant in turn if self._entries.peek(tenant) is not MISSING]

    def _forget_invalid_evicted(self) -> None:
        for tenant in [t for t in self._invalid if self._entries.peek(t) is MISSING]:
            del self._invalid[tenant]

    # Notices

    def _notice(self, notice: StoreNotice) -> None:
        if isinstance(notice, ModeEvent):
            self.stats.events += 1
            tenants: tuple[str, ...] = (notice.tenant,)
            self._log.made_through_edge(notice.tenant)
            log.debug("mode event applied", extra={"tenant": notice.tenant, "mode": notice.mode})
        elif notice.tenants is None:
            self.stats.invalidations += 1
            log.info("the mode store was flushed: reading every cached tenant again")
            self._distrust()
            return
        else:
            self.stats.invalidations += len(notice.tenants)
            tenants = notice.tenants
            for tenant in tenants:
                before = self._entries.peek(tenant)
                if before is not MISSING:
                    self._log.written(tenant, before)
        self._epoch += 1
        for tenant in tenants:
            if self._reads:
                self._noticed[tenant] = self._epoch
            self._entries.discard(tenant)
            self._unverified.pop(tenant, None)
            self._unverified_absent.discard(tenant)
            self._invalid.pop(tenant, None)
        if len(self._noticed) > _NOTICED_MAX:
            self._stale_before = self._epoch
            self._noticed.clear()

    def _distrust(self) -> None:
        """Trust nothing cached until it is read again: a request reads its tenant afresh,
        and the pass reads back the rest; the last known modes answer only for a tenant
        the store cannot be read for."""
        self._epoch += 1
        self._stale_before = self._epoch
        self._noticed.clear()
        present, absent = self._entries.take()
        unverified = self._unverified
        unverified.update(present)
        if len(unverified) > self._max_size:  # several gaps in a row: the newest win
            unverified = dict(islice(unverified.items(), len(unverified) - self._max_size, None))
        self._unverified = unverified
        self._unverified_absent.update(absent)
        self._rotation, self._rotation_at = [], 0
        self._verify_wanted.set()

    async def _listen(self) -> None:
        delay = _MIN_BACKOFF
        subscribed_before = False
        failing = False

        async def on_subscribed(tracked: bool) -> None:
            nonlocal delay, subscribed_before, failing
            if subscribed_before:
                self.stats.reconnects += 1
                log.info("mode notices: subscribed again")
            subscribed_before = True
            failing = False
            delay = _MIN_BACKOFF
            self.tracked = tracked
            self.listening = True
            self._distrust()  # writes may have been missed while not subscribed

        while True:
            try:
                async for notice in self.store.events(on_subscribed):
                    self._notice(notice)
                return  # the store was closed
            except StoreUnavailable as exc:
                self.stats.store_errors += 1
                if not failing:
                    log.warning("mode notices: no subscription, retrying: %s", exc)
                failing = True
            finally:
                self.listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            await self.resync()

    async def _verify_loop(self) -> None:
        delay = _MIN_BACKOFF
        while True:
            await self._verify_wanted.wait()
            self._verify_wanted.clear()
            while not await self._verify():
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
            delay = _MIN_BACKOFF

    async def _verify(self) -> bool:
        """Read back the unverified entries with a key, a chunk at a time; the absent ones
        are never read in bulk, and go once the pass is over. False if the store failed."""
        started, keys = time.monotonic(), 0
        while self._unverified:
            order = list(self._unverified)
            for start in range(0, len(order), PASS_CHUNK):
                chunk = [t for t in order[start : start + PASS_CHUNK] if t in self._unverified]
                if not chunk:
                    continue
                with self._reading() as epoch:
                    try:
                        values = await self.store.get_many(chunk)
                    except StoreUnavailable:
                        self.stats.store_errors += 1
                        return False
                    self.ready = True
                    for tenant, raw in zip(chunk, values, strict=True):
                        if tenant not in self._unverified:
                            continue  # read by a request, or noticed, meanwhile
                        if not self._fresh(tenant, epoch):
                            continue  # older than a reconnect since: read in a later round
                        before = self._unverified.pop(tenant)
                        self._log.log(tenant, before, raw)
                        if raw is not None:
                            self._put(tenant, raw)
                keys += len(chunk)
                await asyncio.sleep(PASS_PAUSE)
        self._unverified_absent.clear()
        self._log.log_left_out()
        if keys:
            self.stats.resynced("reconnect", started, keys)
        return True
