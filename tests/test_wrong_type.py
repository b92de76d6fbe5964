"""A mode key of another Redis type, or of bytes that are not text, is an error for that tenant
(logged, counted, 500 "misconfigured"), never a mode and never permission to write: read cold,
cached and read again on a write, or read back in bulk (MGET reads such a key as missing, which
is legacy: the bug this guards against), on one Redis and on a Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from edge.config import StoreSettings
from edge.core.tenants import Mode
from edge.modes import MISSING, ModeCache, ModeStore, open_store
from edge.moves.service import Moves
from tests.support.redis import ClusterServers, RedisServer
from tests.support.settings import LEGACY_HOST, NEW_HOST
from tests.support.stack import stack
from tests.support.waiting import eventually, eventually_async

# Each type's command, writing a value that would read as "active" if anything took it so.
TYPES = {
    "hash": "redis.call('HSET', KEYS[1], 'mode', 'active')",
    "list": "redis.call('RPUSH', KEYS[1], 'active')",
    "set": "redis.call('SADD', KEYS[1], 'active')",
    "zset": "redis.call('ZADD', KEYS[1], 1, 'active')",
    "stream": "redis.call('XADD', KEYS[1], '*', 'mode', 'active')",
}

Cli = Callable[..., str]


def replace_with(cli: Cli, key: str, kind: str) -> None:
    """The key becomes one of another type in one step, as a script gone wrong would do it."""
    cli("EVAL", f"redis.call('DEL', KEYS[1]); {TYPES[kind]}", "1", key)


async def check_every_path(store: ModeStore, cli: Cli, prefix: str, kind: str) -> None:
    """Cold, cached then rewritten, and read back by a resync: always None, never a mode."""
    cold, cached = "cold-gym", "cached-gym"
    replace_with(cli, f"{prefix}mode:{cold}", kind)
    cli("SET", f"{prefix}mode:{cached}", "active")
    assert await store.get(cold) == f"<a Redis {kind}>"
    assert await store.get_many([cold, cached, "no-key"]) == [f"<a Redis {kind}>", "active", None]

    cache = ModeCache(store, resync_interval=60)
    await cache.start()
    try:
        await eventually_async(lambda: cache.listening)
        assert await cache.load(cold) is None
        assert await cache.load(cached) is Mode.ACTIVE
        replace_with(cli, f"{prefix}mode:{cached}", kind)
        await eventually_async(lambda: cache.cached(cached) is MISSING)  # noticed
        assert await cache.load(cached) is None
        assert cache.stats.invalid_values == 2
    finally:
        await cache.stop()

    # Read back in bulk, by a resync that was told nothing (no subscription).
    bulk = ModeCache(store)
    cli("SET", f"{prefix}mode:{cached}", "active")
    assert await bulk.load(cached) is Mode.ACTIVE
    replace_with(cli, f"{prefix}mode:{cached}", kind)
    assert await bulk.resync()
    assert bulk.cached(cached) is None
    assert bulk.stats.resync_changes == 1


@pytest.fixture
async def redis_store(redis_server: RedisServer, prefix: str) -> AsyncIterator[ModeStore]:
    store = open_store(StoreSettings(url=redis_server.url, prefix=prefix))
    yield store
    await store.close()


@pytest.mark.parametrize("kind", TYPES)
async def test_another_type_is_invalid_on_every_path(
    redis_store: ModeStore, redis_server: RedisServer, prefix: str, kind: str
) -> None:
    await check_every_path(redis_store, redis_server.cli, prefix, kind)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterServers]:
    servers = ClusterServers(masters=3).start()
    yield servers
    servers.stop()


@pytest.mark.parametrize("kind", TYPES)
async def test_another_type_is_invalid_on_every_path_on_a_cluster(
    cluster: ClusterServers, prefix: str, kind: str
) -> None:
    store = open_store(StoreSettings(url=cluster.url, prefix=prefix))
    try:
        await check_every_path(store, cluster.cli, prefix, kind)
    finally:
        await store.close()


async def test_bytes_that_are_not_text_are_an_invalid_value(
    redis_store: ModeStore, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("EVAL", "redis.call('SET', KEYS[1], '\\255active')", "1", f"{prefix}mode:t")
    assert await redis_store.get("t") == "\ufffdactive"
    assert await redis_store.get_many(["t"]) == ["\ufffdactive"]
    assert await ModeCache(redis_store).load("t") is None


@pytest.mark.parametrize("kind", TYPES)
def test_a_customer_gets_misconfigured_and_nothing_is_forwarded(
    redis_server: RedisServer, prefix: str, kind: str
) -> None:
    replace_with(redis_server.cli, f"{prefix}mode:cold", kind)
    redis_server.cli("SET", f"{prefix}mode:warm", "active")
    with stack(redis_server.url, prefix, store_settings={"resync_interval": 60}) as edge:
        eventually(lambda: edge.edge.cache.listening)
        with edge.client() as client:
            assert client.get("/warm/", headers={"Host": NEW_HOST}).status_code == 200
            replace_with(redis_server.cli, f"{prefix}mode:warm", kind)
            eventually(lambda: edge.edge.cache.cached("warm") is MISSING)
            forwarded = edge.reached_backend()
            for tenant in ("cold", "warm"):
                for host, method in ((NEW_HOST, "GET"), (NEW_HOST, "POST"), (LEGACY_HOST, "GET")):
                    answer = client.request(method, f"/{tenant}/checkout", headers={"Host": host})
                    assert answer.status_code == 500, (tenant, host, method)
                    assert answer.headers["x-edge-mode"] == "invalid"
            assert edge.reached_backend() == forwarded


@pytest.mark.parametrize("kind", TYPES)
async def test_a_move_through_edge_replaces_a_key_of_another_type(
    redis_store: ModeStore, redis_server: RedisServer, prefix: str, kind: str
) -> None:
    replace_with(redis_server.cli, f"{prefix}mode:acme-gym", kind)
    change = await Moves(redis_store).set_mode("acme-gym", Mode.SETUP, actor="ana")
    assert (change.previous, change.changed) == (f"<a Redis {kind}>", True)
    assert redis_server.cli("TYPE", f"{prefix}mode:acme-gym") == "string"
    assert await redis_store.get("acme-gym") == "setup"
    assert [c.previous for c in await redis_store.history("acme-gym")] == [f"<a Redis {kind}>"]
