"""The Redis store against a real redis-server: key schema, races between clients, outages."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge.config import StoreSettings
from edge.core.refusals import ChangeRefused
from edge.core.tenants import Mode
from edge.modes import ModeStore, StoreUnavailable, open_store, subscription
from edge.modes.base import KeysChanged
from edge.modes.redis import RedisStore
from edge.moves.service import Moves
from tests.support.ports import free_port, wait_for_port
from tests.support.redis import RedisServer


def _open(server: RedisServer, prefix: str = "edge:", timeout: float = 0.5) -> ModeStore:
    return open_store(StoreSettings(url=server.url, prefix=prefix, timeout=timeout))


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str) -> AsyncIterator[ModeStore]:
    store = _open(redis_server, prefix)
    yield store
    await store.close()


async def test_keys_are_plain_and_shared_with_redis_cli(
    store: ModeStore, redis_server: RedisServer, prefix: str
) -> None:
    await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana", via="api")

    assert redis_server.cli("TYPE", f"{prefix}mode:acme-gym") == "string"
    assert redis_server.cli("GET", f"{prefix}mode:acme-gym") == "setup"
    entry = json.loads(redis_server.cli("LINDEX", f"{prefix}history:acme-gym", "0"))
    assert entry["actor"] == "ana" and entry["via"] == "api"
    assert (entry["from"], entry["to"], entry["forced"]) == (None, "setup", False)

    redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
    assert await store.get("acme-gym") == "active"
    with pytest.raises(ChangeRefused, match="acme-gym is active"):
        await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana")


async def test_prefix_special_characters_do_not_widen_the_listing(
    redis_server: RedisServer, prefix: str
) -> None:
    odd = open_store(StoreSettings(url=redis_server.url, prefix=f"{prefix}[x]*:"))
    try:
        redis_server.cli("SET", f"{prefix}x:mode:other-gym", "setup")
        await Moves(odd).set_mode("acme-gym", Mode.SETUP, actor="ana")
        assert await odd.modes() == {"acme-gym": "setup"}
    finally:
        await odd.close()


async def test_forward_only_holds_across_clients(redis_server: RedisServer, prefix: str) -> None:
    """Separate clients (separate instances) race; the compare-and-set in Redis decides."""
    # A generous timeout: this is about atomicity, and 120 calls at once on a busy machine
    # can take longer than the production 0.5 s.
    stores = [_open(redis_server, prefix, timeout=10) for _ in range(3)]
    try:
        tenants = [f"race-{n}" for n in range(40)]
        targets = [Mode.SETUP, Mode.ACTIVE, Mode.SETUP]
        results = await asyncio.gather(
            *(
                Moves(s).set_mode(tenant, target, actor=f"op-{i}")
                for tenant in tenants
                for i, (s, target) in enumerate(zip(stores, targets, strict=True))
            ),
            return_exceptions=True,
        )
        assert all(
            not isinstance(r, BaseException) or isinstance(r, ChangeRefused) for r in results
        )
        for tenant in tenants:
            assert await stores[0].get(tenant) == "active"
            history = await stores[0].history(tenant)
            assert history[0].mode is Mode.ACTIVE
            assert all(not change.forced for change in history)
            moves = [(Mode.parse(change.previous), change.mode) for change in history]
            assert all(old is not None and new.rank > old.rank for old, new in moves)
    finally:
        for s in stores:
            await s.close()


async def test_a_stopped_server_is_unavailable_and_recovers(own_redis: RedisServer) -> None:
    store = _open(own_redis)
    try:
        await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana")
        own_redis.stop()
        for operation in (
            store.ping(),
            store.get("acme-gym"),
            store.get_many(["acme-gym"]),
            store.modes(),
            store.history("acme-gym"),
            Moves(store).set_mode("acme-gym", Mode.ACTIVE, actor="ana"),
        ):
            with pytest.raises(StoreUnavailable):
                await operation
        own_redis.start()
        await store.ping()
        assert await store.get("acme-gym") is None  # the server kept no data
        assert (await Moves(store).set_mode("acme-gym", Mode.ACTIVE, actor="ana")).changed
    finally:
        await store.close()


async def test_a_hung_server_times_out(own_redis: RedisServer) -> None:
    store = _open(own_redis)
    assert own_redis.process is not None
    try:
        await store.ping()
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get("acme-gym")
        assert time.monotonic() - started < 3
        os.kill(own_redis.process.pid, signal.SIGCONT)
        await store.ping()
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        await store.close()


async def test_a_lost_subscription_raises(own_redis: RedisServer) -> None:
    store = _open(own_redis)
    subscribed = asyncio.Event()

    async def on_subscribed(tracked: bool) -> None:
        subscribed.set()

    async def listen() -> None:
        async for _ in store.events(on_subscribed):
            pass

    try:
        listener = asyncio.create_task(listen())
        await asyncio.wait_for(subscribed.wait(), 5)
        own_redis.stop()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(listener, 5)
        with pytest.raises(StoreUnavailable):
            await anext(aiter(store.events()))
    finally:
        await store.close()


async def test_a_quiet_subscription_is_pinged_and_a_hung_server_ends_it(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscription, "IDLE_PING", 0.2)
    assert own_redis.process is not None
    store = _open(own_redis)
    subscribed = asyncio.Event()

    async def on_subscribed(tracked: bool) -> None:
        subscribed.set()

    notices = store.events(on_subscribed)
    first = asyncio.ensure_future(anext(notices))
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        await asyncio.sleep(1)  # silent for five pings: each answered
        assert not first.done()
        own_redis.cli("SET", "edge:mode:acme-gym", "setup")
        assert await asyncio.wait_for(first, 5) == KeysChanged(("acme-gym",))
        os.kill(own_redis.process.pid, signal.SIGSTOP)  # up, but answering nothing
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="no answer to PING"):
            await asyncio.wait_for(anext(notices), 5)
        assert time.monotonic() - started < 3
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
        await notices.aclose()
        await store.close()


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A real redis sentinel watching the shared test server as master ``edge-test``."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor edge-test 127.0.0.1 {redis_server.port} 1\n"
    )
    process = subprocess.Popen(
        [redis_server.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.kill()
        process.wait()


async def test_sentinel_url_finds_the_master(sentinel: int, prefix: str) -> None:
    store = open_store(
        StoreSettings(url=f"redis+sentinel://127.0.0.1:{sentinel}/edge-test/0", prefix=prefix)
    )
    assert isinstance(store, RedisStore)
    try:
        await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana")
        assert await store.get("acme-gym") == "setup"
        assert [c.mode for c in await store.history("acme-gym")] == [Mode.SETUP]
    finally:
        await store.close()
