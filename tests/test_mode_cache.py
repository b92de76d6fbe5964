"""The mode cache against a real redis-server: hits, single flight, notices, resync, bounds,
outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace

import pytest

from edge.core.tenants import Mode
from edge.modes import MISSING, ModeCache, ModeStore, StoreUnavailable
from edge.modes import cache as cache_module
from edge.modes.memory import MemoryStore
from edge.modes.redis import RedisStore
from edge.moves.service import Moves
from tests.support.redis import RedisServer
from tests.support.waiting import eventually_async


class CountingStore(RedisStore):
    """A real RedisStore that counts the reads the cache makes, and their keys."""

    reads = 0
    keys_read: list[int]

    async def get_many(self, tenants: Sequence[str]) -> list[str | None]:
        self.reads += 1
        self.keys_read = [*getattr(self, "keys_read", []), len(tenants)]
        return await super().get_many(tenants)


class GatedStore(MemoryStore):
    """A memory store whose reads finish only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def get_many(self, tenants: Sequence[str]) -> list[str | None]:
        values = await super().get_many(tenants)
        await self.gate.wait()
        return values


async def served(cache: ModeCache, tenant: str) -> Mode | None:
    """What a request gets: the cached mode, or a read of the store."""
    mode = cache.cached(tenant)
    return await cache.load(tenant) if mode is MISSING else mode


async def serves(cache: ModeCache, tenant: str, mode: Mode, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while await served(cache, tenant) is not mode:
        if time.monotonic() > deadline:
            raise AssertionError(f"{tenant} is not served as {mode} within {within} s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str) -> AsyncIterator[CountingStore]:
    store = CountingStore.from_url(redis_server.url, prefix=prefix)
    yield store
    await store.close()


@pytest.fixture
async def writer(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisStore]:
    """Another client on the same Redis: the CLI or another edge instance."""
    store = RedisStore.from_url(redis_server.url, prefix=prefix)
    yield store
    await store.close()


async def started(store: ModeStore, resync_interval: float, **options: int | float) -> ModeCache:
    cache = ModeCache(store, resync_interval=resync_interval, **options)  # type: ignore[arg-type]
    await cache.start()
    await eventually_async(lambda: cache.listening)
    return cache


async def test_a_hit_costs_no_store_call(store: CountingStore, writer: RedisStore) -> None:
    await Moves(writer).set_mode("acme-gym", Mode.SETUP, actor="ana")
    cache = ModeCache(store)

    assert cache.cached("acme-gym") is MISSING
    assert await cache.load("acme-gym") is Mode.SETUP
    for _ in range(100):
        assert cache.cached("acme-gym") is Mode.SETUP
        assert await cache.load("acme-gym") is Mode.SETUP
    assert store.reads == 1
    assert (cache.stats.hits, cache.stats.misses) == (100, 1)
    assert cache.ready


async def test_one_fetch_however_many_wait(store: CountingStore) -> None:
    cache = ModeCache(store)
    modes = await asyncio.gather(*(cache.load("acme-gym") for _ in range(100)))
    assert modes == [Mode.LEGACY] * 100
    assert store.reads == 1


async def test_a_waiter_that_goes_away_does_not_cancel_the_fetch() -> None:
    store = GatedStore()
    store.set_raw("acme-gym", "active")
    cache = ModeCache(store)
    impatient = asyncio.create_task(cache.load("acme-gym"))
    patient = asyncio.create_task(cache.load("acme-gym"))
    await asyncio.sleep(0.01)
    impatient.cancel()
    store.gate.set()
    assert await patient is Mode.ACTIVE
    assert cache.cached("acme-gym") is Mode.ACTIVE


async def test_a_missing_key_is_cached_as_legacy_in_the_negative_cache(
    store: CountingStore,
) -> None:
    cache = ModeCache(store)
    assert await cache.load("new-gym") is Mode.LEGACY
    assert cache.cached("new-gym") is Mode.LEGACY
    assert store.reads == 1
    assert cache.kinds() == {"positive": 0, "invalid": 0, "negative": 1, "unverified": 0}


async def test_an_invalid_value_is_cached_as_none_and_counted_once(
    store: CountingStore, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "actve")
    cache = ModeCache(store)
    assert await cache.load("acme-gym") is None
    assert cache.cached("acme-gym") is None
    assert await cache.resync()
    assert cache.stats.invalid_values == 1
    assert cache.kinds()["invalid"] == 1

    redis_server.cli("SET", f"{prefix}mode:acme-gym", "Active")
    assert await cache.resync()  # no subscription here: the resync finds the edit
    assert cache.stats.invalid_values == 2
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
    assert await cache.resync()
    assert cache.cached("acme-gym") is Mode.ACTIVE
    assert cache.stats.resync_changes == 2


async def test_a_change_through_edge_is_served_at_once(
    store: CountingStore, writer: RedisStore
) -> None:
    cache = await started(store, resync_interval=60)
    try:
        assert await cache.load("acme-gym") is Mode.LEGACY
        await Moves(writer).set_mode("acme-gym", Mode.SETUP, actor="ana")
        await serves(cache, "acme-gym", Mode.SETUP, within=2)
        await Moves(writer).set_mode("acme-gym", Mode.LEGACY, actor="ana", force=True)
        await serves(cache, "acme-gym", Mode.LEGACY, within=2)
        assert cache.stats.events == 2
    finally:
        await cache.stop()


async def test_a_raw_edit_is_served_at_once_without_waiting_for_a_resync(
    store: CountingStore, redis_server: RedisServer, prefix: str
) -> None:
    cache = await started(store, resync_interval=60)  # no resync within the test
    try:
        assert cache.tracked
        assert await cache.load("acme-gym") is Mode.LEGACY
        assert await cache.load("swim-school") is Mode.LEGACY
        redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
        redis_server.cli("SET", f"{prefix}mode:swim-school", "setup")
        await serves(cache, "acme-gym", Mode.ACTIVE, within=2)
        await serves(cache, "swim-school", Mode.SETUP, within=2)
        redis_server.cli("DEL", f"{prefix}mode:acme-gym")
        await serves(cache, "acme-gym", Mode.LEGACY, within=2)
        assert cache.stats.invalidations >= 3
        assert cache.stats.resyncs["periodic"].runs == 0
    finally:
        await cache.stop()


async def test_a_raw_edit_is_logged_by_the_instances_that_held_the_tenant(
    store: CountingStore,
    writer: RedisStore,
    redis_server: RedisServer,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = await started(store, resync_interval=60)
    found = "mode changed in the store, found by resync"
    try:
        for tenant in ("acme-gym", "swim-school"):
            assert await cache.load(tenant) is Mode.LEGACY
        with caplog.at_level(logging.INFO, logger="edge.modes"):
            await Moves(writer).set_mode("acme-gym", Mode.SETUP, actor="ana")  # its maker logs it
            redis_server.cli("SET", f"{prefix}mode:swim-school", "active")  # no maker
            redis_server.cli("SET", f"{prefix}mode:not-held", "active")
            await until_noticed(cache, 3)
            await asyncio.sleep(0.1)  # the event follows its invalidation
            assert await cache.resync()
            assert [r for r in caplog.records if r.message == found] == []  # not yet judged
            assert await cache.resync()
        [logged] = [r for r in caplog.records if r.message == found]
        assert (logged.tenant, logged.__dict__["from"], logged.to) == (  # type: ignore[attr-defined]
            "swim-school",
            Mode.LEGACY,
            Mode.ACTIVE,
        )
    finally:
        await cache.stop()


async def until_noticed(cache: ModeCache, invalidations: int) -> None:
    await eventually_async(lambda: cache.stats.invalidations >= invalidations, within=2)


async def test_a_notice_beats_a_read_that_started_before_it() -> None:
    store = GatedStore()
    cache = await started(store, resync_interval=60)
    try:
        loading = asyncio.create_task(cache.load("acme-gym"))  # reads "no key" and waits
        await asyncio.sleep(0.01)
        store.set_raw("acme-gym", "active")  # its invalidation arrives before the read ends
        await asyncio.sleep(0.01)
        store.gate.set()
        assert await loading is Mode.LEGACY  # right for the requests that were waiting
        assert cache.cached("acme-gym") is MISSING  # but not cached: it is older than the edit
        assert await cache.load("acme-gym") is Mode.ACTIVE
        assert cache.cached("acme-gym") is Mode.ACTIVE
    finally:
        await cache.stop()


async def test_without_tracking_raw_edits_arrive_within_the_resync_interval(
    own_redis: RedisServer, prefix: str
) -> None:
    own_redis.cli("ACL", "SETUSER", "default", "-client|tracking")  # as a locked-down Redis
    store = CountingStore.from_url(own_redis.url, prefix=prefix)
    cache = await started(store, resync_interval=0.2)
    try:
        assert not cache.tracked
        assert await cache.load("acme-gym") is Mode.LEGACY
        own_redis.cli("SET", f"{prefix}mode:swim-school", "active")
        assert await cache.load("swim-school") is Mode.ACTIVE
        own_redis.cli("SET", f"{prefix}mode:swim-school", "setup")
        own_redis.cli("SET", f"{prefix}mode:acme-gym", "active")
        await serves(cache, "acme-gym", Mode.ACTIVE)
        await serves(cache, "swim-school", Mode.SETUP)
        assert cache.stats.invalidations == 0
    finally:
        await cache.stop()
        await store.close()


async def test_the_least_recently_used_go_first(
    store: CountingStore, redis_server: RedisServer, prefix: str
) -> None:
    tenants = ("gym-a", "gym-b", "gym-c", "gym-d", "gym-e")
    redis_server.cli("MSET", *(x for t in tenants for x in (f"{prefix}mode:{t}", "setup")))
    cache = ModeCache(store, max_size=4)
    for tenant in tenants[:4]:
        await cache.load(tenant)
    assert cache.cached("gym-a") is Mode.SETUP  # the first in, but used since
    await cache.load("gym-e")
    assert len(cache) == 4
    assert cache.cached("gym-b") is MISSING  # the least recently used
    assert cache.cached("gym-a") is Mode.SETUP
    assert cache.cached("gym-e") is Mode.SETUP


async def test_made_up_ids_never_push_out_a_real_tenant(
    store: CountingStore, writer: RedisStore
) -> None:
    await Moves(writer).set_mode("real-gym", Mode.ACTIVE, actor="ana")
    cache = ModeCache(store, max_size=10, negative_size=10)
    assert await cache.load("real-gym") is Mode.ACTIVE
    await cache.load("legacy-gym")  # a real tenant without a key
    for n in range(200):
        await cache.load(f"made-up-{n}")
        if n % 3 == 0:
            assert cache.cached("legacy-gym") is Mode.LEGACY  # in use: kept
    assert len(cache) <= 11
    assert cache.kinds()["negative"] <= 10
    gets = store.reads
    assert cache.cached("real-gym") is Mode.ACTIVE
    assert cache.cached("legacy-gym") is Mode.LEGACY
    assert store.reads == gets


async def test_a_negative_entry_expires_after_its_ttl(
    store: CountingStore, redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cache's own clock, moved by the test: the TTL passes when the test says, however
    # slow the machine (the event loop keeps the real one).
    now = [1_000.0]
    monkeypatch.setattr(cache_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    cache = ModeCache(store, negative_ttl=0.05)
    assert await cache.load("new-gym") is Mode.LEGACY
    redis_server.cli("SET", f"{prefix}mode:new-gym", "setup")  # no subscription: unnoticed
    now[0] += 0.04
    assert await cache.resync()
    assert cache.cached("new-gym") is Mode.LEGACY  # still within its TTL
    now[0] += 0.02
    assert await cache.resync()
    assert cache.cached("new-gym") is MISSING
    assert await cache.load("new-gym") is Mode.SETUP


async def test_the_periodic_resync_reads_a_bounded_slice_in_turn(
    store: CountingStore, redis_server: RedisServer, prefix: str
) -> None:
    tenants = [f"gym-{n}" for n in range(1_050)]
    redis_server.cli("MSET", *(x for t in tenants for x in (f"{prefix}mode:{t}", "setup")))
    cache = await started(store, resync_interval=60, resync_keys=100)
    try:
        await asyncio.gather(*(cache.load(t) for t in tenants))
        await eventually_async(lambda: not cache.kinds()["unverified"])
        store.keys_read = []
        for _ in range(11):
            assert await cache.resync()
        assert store.keys_read == [100] * 10 + [50]  # each tenant once, 100 at a time
        assert cache.stats.resyncs["periodic"].keys == 1_050
        assert cache.stats.resync_changes == 0
    finally:
        await cache.stop()


async def test_a_write_no_notice_reported_is_found_by_the_resync_in_its_turn(
    store: CountingStore, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "setup")
    cache = ModeCache(store, resync_keys=1)
    cache.listening = cache.tracked = True  # as if subscribed, and the notices were lost
    assert await cache.load("acme-gym") is Mode.SETUP
    assert await cache.load("swim-school") is Mode.LEGACY
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
    redis_server.cli("SET", f"{prefix}mode:swim-school", "setup")
    assert await cache.resync()
    assert cache.cached("acme-gym") is Mode.ACTIVE
    assert cache.stats.resync_changes == 1
    # A negative entry is never read in bulk: its TTL (or a notice) ends it.
    assert await cache.resync()
    assert cache.stats.resyncs["periodic"].keys == 2  # acme-gym, twice
    assert cache.cached("swim-school") is Mode.LEGACY


async def test_an_unreachable_store_with_nothing_cached_is_an_error(own_redis: RedisServer) -> None:
    own_redis.stop()
    store = RedisStore.from_url(own_redis.url)
    cache = ModeCache(store)
    try:
        with pytest.raises(StoreUnavailable):
            await cache.load("acme-gym")
        assert not cache.ready
        assert cache.cached("acme-gym") is MISSING
        assert cache.stats.store_errors == 1
    finally:
        await store.close()


async def test_survives_a_redis_restart_and_trusts_nothing_it_did_not_read_again(
    own_redis: RedisServer, prefix: str
) -> None:
    store = CountingStore.from_url(own_redis.url, prefix=prefix)
    writer = RedisStore.from_url(own_redis.url, prefix=prefix)
    await Moves(writer).set_mode("acme-gym", Mode.SETUP, actor="ana")
    cache = await started(store, resync_interval=30)
    try:
        assert await cache.load("acme-gym") is Mode.SETUP
        assert await cache.load("new-gym") is Mode.LEGACY

        own_redis.stop()
        await eventually_async(lambda: not cache.listening)
        assert not await cache.resync()
        assert cache.cached("acme-gym") is Mode.SETUP  # the last known modes keep serving
        assert cache.cached("new-gym") is Mode.LEGACY
        with pytest.raises(StoreUnavailable):
            await cache.load("other-gym")
        assert cache.stats.store_errors >= 2

        own_redis.start()  # same port, no data kept
        await eventually_async(lambda: cache.listening and cache.stats.reconnects == 1)
        # Read again, not guessed: the restarted server has no key for it.
        assert await served(cache, "acme-gym") is Mode.LEGACY
        await Moves(writer).set_mode("new-gym", Mode.ACTIVE, actor="ana")
        await serves(cache, "new-gym", Mode.ACTIVE)
        assert await cache.load("other-gym") is Mode.LEGACY
    finally:
        await cache.stop()
        await store.close()
        await writer.close()


async def test_edits_made_while_the_subscription_was_down_are_served(
    own_redis: RedisServer, prefix: str
) -> None:
    store = CountingStore.from_url(own_redis.url, prefix=prefix)
    cache = await started(store, resync_interval=60)
    tenants = [f"gym-{n}" for n in range(20)]
    try:
        for tenant in tenants:
            assert await cache.load(tenant) is Mode.LEGACY
        own_redis.cli("SET", f"{prefix}mode:gym-0", "setup")  # positive control: noticed
        await serves(cache, "gym-0", Mode.SETUP, within=2)
        assert await served(cache, "gym-1") is Mode.LEGACY
        # The edits and the subscription's end in the same instant: their invalidations
        # die with the connection, never delivered.
        own_redis.transaction(
            ("SET", f"{prefix}mode:gym-0", "active"),
            ("SET", f"{prefix}mode:gym-1", "active"),
            ("CLIENT", "KILL", "TYPE", "pubsub"),
        )
        await eventually_async(lambda: cache.stats.reconnects == 1)
        await serves(cache, "gym-0", Mode.ACTIVE, within=2)
        await serves(cache, "gym-1", Mode.ACTIVE, within=2)
        assert [await served(cache, t) for t in tenants[2:]] == [Mode.LEGACY] * 18
    finally:
        await cache.stop()
        await store.close()


async def test_the_pass_after_a_reconnect_reads_back_what_the_cache_held(
    own_redis: RedisServer, prefix: str
) -> None:
    tenants = [f"gym-{n}" for n in range(1_200)]
    own_redis.cli("MSET", *(x for t in tenants for x in (f"{prefix}mode:{t}", "setup")))
    store = CountingStore.from_url(own_redis.url, prefix=prefix)
    cache = await started(store, resync_interval=60)
    try:
        await asyncio.gather(*(cache.load(t) for t in tenants))
        await cache.load("no-key")
        await eventually_async(lambda: cache.kinds()["positive"] == 1_200)
        own_redis.transaction(  # its invalidation is lost: the pass reads it back
            ("SET", f"{prefix}mode:gym-7", "active"), ("CLIENT", "KILL", "TYPE", "pubsub")
        )
        await eventually_async(lambda: cache.stats.reconnects == 1)
        await eventually_async(lambda: cache.stats.resyncs["reconnect"].runs >= 1)
        await eventually_async(lambda: cache.kinds()["unverified"] == 0)
        gets = store.reads
        assert [cache.cached(t) for t in tenants if t != "gym-7"] == [Mode.SETUP] * 1_199
        assert cache.cached("gym-7") is Mode.ACTIVE
        assert cache.cached("no-key") is MISSING  # a negative entry is read on demand only
        assert store.reads == gets
        assert store.keys_read and max(store.keys_read) <= 500  # in chunks
    finally:
        await cache.stop()
        await store.close()


async def test_unverified_modes_answer_while_the_store_is_down_again(
    own_redis: RedisServer, prefix: str
) -> None:
    own_redis.cli("SET", f"{prefix}mode:acme-gym", "active")
    own_redis.cli("SAVE")  # the restarted server keeps the key
    store = CountingStore.from_url(own_redis.url, prefix=prefix)
    cache = ModeCache(store)
    try:
        assert await cache.load("acme-gym") is Mode.ACTIVE
        assert await cache.load("new-gym") is Mode.LEGACY
        cache._distrust()  # as a reconnect does, before its pass has read anything
        assert cache.cached("acme-gym") is MISSING
        own_redis.stop()
        assert await cache.load("acme-gym") is Mode.ACTIVE  # the last known mode, not a 503
        assert await cache.load("new-gym") is Mode.LEGACY
        assert cache.cached("acme-gym") is MISSING  # still not trusted
        own_redis.start()
        assert await cache.load("acme-gym") is Mode.ACTIVE
        assert cache.cached("acme-gym") is Mode.ACTIVE
    finally:
        await store.close()


class FailingStore(GatedStore):
    """A gated memory store that, once ``down``, fails every read it has not begun."""

    down = False

    async def get_many(self, tenants: Sequence[str]) -> list[str | None]:
        if self.down:
            raise StoreUnavailable("redis is down")
        return await super().get_many(tenants)


async def test_a_pass_overtaken_by_another_reconnect_keeps_the_last_known_modes() -> None:
    """Connection lost twice in a row: the first pass's read ends after the second
    reconnect, so it is too old to cache; the mode it read back must stay the last known
    one until a newer read, or a store that fails again would turn it into a 503."""
    store = FailingStore()
    store.set_raw("acme-gym", "active")
    store.gate.set()
    cache = ModeCache(store)
    assert await cache.load("acme-gym") is Mode.ACTIVE
    store.gate.clear()
    cache._distrust()  # a reconnect, as _listen makes it
    passing = asyncio.create_task(cache._verify())
    await asyncio.sleep(0.01)  # its read is in flight
    cache._distrust()  # and the connection is lost and made again meanwhile
    store.down = True
    store.gate.set()
    assert await passing is False  # its next read failed
    assert await cache.load("acme-gym") is Mode.ACTIVE  # the last known mode, not a 503
    store.down = False  # the positive control: read back as soon as the store answers
    assert await cache._verify() is True
    assert cache.cached("acme-gym") is Mode.ACTIVE


async def test_a_flush_has_every_cached_tenant_read_again(
    own_redis: RedisServer, prefix: str
) -> None:
    own_redis.cli("SET", f"{prefix}mode:acme-gym", "active")
    store = CountingStore.from_url(own_redis.url, prefix=prefix)
    cache = await started(store, resync_interval=60)
    try:
        assert await cache.load("acme-gym") is Mode.ACTIVE
        own_redis.cli("FLUSHDB")
        await serves(cache, "acme-gym", Mode.LEGACY, within=2)
    finally:
        await cache.stop()
        await store.close()


async def test_stop_ends_the_background_tasks(store: CountingStore) -> None:
    cache = await started(store, resync_interval=0.05)
    await cache.stop()
    assert not cache.listening
    await cache.load("acme-gym")
    calls = store.reads
    await asyncio.sleep(0.2)
    assert store.reads == calls
