"""The mode cache against a real redis-server: hits, single flight, events, resync, outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from edge.modes import MISSING, ModeCache, ModeStore, StoreUnavailable
from edge.modes.memory import MemoryStore
from edge.modes.redis import RedisStore
from edge.policy import Mode
from tests.support import RedisServer


class CountingStore(RedisStore):
    """A real RedisStore that counts the reads the cache makes."""

    gets = 0
    get_manys = 0

    async def get(self, tenant: str) -> str | None:
        self.gets += 1
        return await super().get(tenant)

    async def get_many(self, tenants: Sequence[str]) -> list[str | None]:
        self.get_manys += 1
        return await super().get_many(tenants)


class GatedStore(MemoryStore):
    """A memory store whose reads finish only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def get(self, tenant: str) -> str | None:
        value = await super().get(tenant)
        await self.gate.wait()
        return value


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
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


async def started(store: ModeStore, resync_interval: float) -> ModeCache:
    cache = ModeCache(store, resync_interval=resync_interval)
    await cache.start()
    await eventually(lambda: cache.listening)
    return cache


async def test_a_hit_costs_no_store_call(store: CountingStore, writer: RedisStore) -> None:
    await writer.set_mode("acme-gym", Mode.SETUP, actor="ana")
    cache = ModeCache(store)

    assert cache.cached("acme-gym") is MISSING
    assert await cache.load("acme-gym") is Mode.SETUP
    for _ in range(100):
        assert cache.cached("acme-gym") is Mode.SETUP
        assert await cache.load("acme-gym") is Mode.SETUP
    assert store.gets == 1
    assert (cache.stats.hits, cache.stats.misses) == (100, 1)
    assert cache.ready


async def test_one_fetch_however_many_wait(store: CountingStore) -> None:
    cache = ModeCache(store)
    modes = await asyncio.gather(*(cache.load("acme-gym") for _ in range(100)))
    assert modes == [Mode.LEGACY] * 100
    assert store.gets == 1


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


async def test_a_missing_key_is_cached_as_legacy(store: CountingStore) -> None:
    cache = ModeCache(store)
    assert await cache.load("new-gym") is Mode.LEGACY
    assert cache.cached("new-gym") is Mode.LEGACY
    assert store.gets == 1


async def test_an_invalid_value_is_cached_as_none_and_counted_once(
    store: CountingStore, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "actve")
    cache = ModeCache(store)
    assert await cache.load("acme-gym") is None
    assert cache.cached("acme-gym") is None
    assert await cache.resync()
    assert cache.stats.invalid_values == 1

    redis_server.cli("SET", f"{prefix}mode:acme-gym", "Active")
    assert await cache.resync()
    assert cache.stats.invalid_values == 2
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
    assert await cache.resync()
    assert cache.cached("acme-gym") is Mode.ACTIVE


async def test_an_event_applies_at_once(store: CountingStore, writer: RedisStore) -> None:
    cache = await started(store, resync_interval=60)
    try:
        assert await cache.load("acme-gym") is Mode.LEGACY
        await writer.set_mode("acme-gym", Mode.SETUP, actor="ana")
        await eventually(lambda: cache.cached("acme-gym") is Mode.SETUP, within=2)
        await writer.set_mode("acme-gym", Mode.LEGACY, actor="ana", force=True)
        await eventually(lambda: cache.cached("acme-gym") is Mode.LEGACY, within=2)
        assert store.gets == 1
    finally:
        await cache.stop()


async def test_an_event_beats_a_read_that_started_before_it() -> None:
    store = GatedStore()
    cache = await started(store, resync_interval=60)
    try:
        loading = asyncio.create_task(cache.load("acme-gym"))  # reads "no key" and waits
        await asyncio.sleep(0.01)
        await store.set_mode("acme-gym", Mode.ACTIVE, actor="ana")
        await eventually(lambda: cache.cached("acme-gym") is Mode.ACTIVE)
        store.gate.set()
        assert await loading is Mode.ACTIVE
        assert cache.cached("acme-gym") is Mode.ACTIVE
    finally:
        await cache.stop()


async def test_raw_edits_arrive_within_the_resync_interval(
    store: CountingStore, redis_server: RedisServer, prefix: str
) -> None:
    cache = await started(store, resync_interval=0.2)
    try:
        assert await cache.load("acme-gym") is Mode.LEGACY
        assert await cache.load("swim-school") is Mode.LEGACY
        redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
        redis_server.cli("SET", f"{prefix}mode:swim-school", "setup")
        await eventually(lambda: cache.cached("acme-gym") is Mode.ACTIVE)
        await eventually(lambda: cache.cached("swim-school") is Mode.SETUP)
        redis_server.cli("DEL", f"{prefix}mode:acme-gym")
        await eventually(lambda: cache.cached("acme-gym") is Mode.LEGACY)
        assert store.gets == 2
        age = cache.stats.age()
        assert age is not None and age < 5
    finally:
        await cache.stop()


async def test_oldest_entries_are_evicted_past_the_size_bound(store: CountingStore) -> None:
    cache = ModeCache(store, max_size=3)
    for n in range(5):
        await cache.load(f"gym-{n}")
    assert len(cache) == 3
    assert cache.cached("gym-0") is MISSING and cache.cached("gym-1") is MISSING
    assert cache.cached("gym-4") is Mode.LEGACY


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


async def test_survives_a_redis_restart(own_redis: RedisServer, prefix: str) -> None:
    store = CountingStore.from_url(own_redis.url, prefix=prefix)
    writer = RedisStore.from_url(own_redis.url, prefix=prefix)
    await writer.set_mode("acme-gym", Mode.SETUP, actor="ana")
    cache = await started(store, resync_interval=30)
    try:
        assert await cache.load("acme-gym") is Mode.SETUP
        assert await cache.load("new-gym") is Mode.LEGACY

        own_redis.stop()
        await eventually(lambda: not cache.listening)
        assert not await cache.resync()
        assert cache.cached("acme-gym") is Mode.SETUP  # the last known modes keep serving
        assert cache.cached("new-gym") is Mode.LEGACY
        with pytest.raises(StoreUnavailable):
            await cache.load("other-gym")
        assert cache.stats.store_errors >= 2

        own_redis.start()  # same port, no data kept
        await eventually(lambda: cache.listening and cache.stats.reconnects == 1)
        await writer.set_mode("new-gym", Mode.ACTIVE, actor="ana")
        await eventually(lambda: cache.cached("new-gym") is Mode.ACTIVE)
        # The resync after subscribing again read what the restarted server holds.
        assert cache.cached("acme-gym") is Mode.LEGACY
        assert await cache.load("other-gym") is Mode.LEGACY
    finally:
        await cache.stop()
        await store.close()
        await writer.close()


async def test_stop_ends_the_background_tasks(store: CountingStore) -> None:
    cache = await started(store, resync_interval=0.05)
    await cache.stop()
    assert not cache.listening
    calls = store.get_manys
    await cache.load("acme-gym")
    await asyncio.sleep(0.2)
    assert store.get_manys == calls
