"""rediss://: a redis-server that speaks only TLS and asks for client certificates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import StoreSettings
from edge.core.tenants import Mode
from edge.modes import ModeEvent, ModeStore, StoreUnavailable, open_store
from edge.modes.base import KeysChanged
from edge.moves.service import Moves
from tests.support.certificates import make_certificates
from tests.support.ports import free_port
from tests.support.redis import RedisServer


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_redis(certs: Path) -> Iterator[RedisServer]:
    port = free_port()
    server = RedisServer(
        port=port,
        args=(
            *("--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(certs / "server.crt")),
            *("--tls-key-file", str(certs / "server.key")),
            *("--tls-ca-cert-file", str(certs / "ca.crt"), "--tls-auth-clients", "yes"),
        ),
    ).start()
    yield server
    server.stop()


def settings(server: RedisServer, prefix: str, **tls: Any) -> StoreSettings:
    return StoreSettings(url=f"rediss://127.0.0.1:{server.port}/0", prefix=prefix, **tls)


@pytest.fixture
async def store(tls_redis: RedisServer, certs: Path, prefix: str) -> AsyncIterator[ModeStore]:
    store = open_store(
        settings(
            tls_redis,
            prefix,
            ssl_ca_certs=certs / "ca.crt",
            ssl_certfile=certs / "client.crt",
            ssl_keyfile=certs / "client.key",
        )
    )
    yield store
    await store.close()


async def test_changes_and_events_travel_over_tls(store: ModeStore) -> None:
    subscribed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def on_subscribed(tracked: bool) -> None:
        subscribed.set_result(tracked)

    events = store.events(on_subscribed)
    first = asyncio.ensure_future(anext(events))
    assert await asyncio.wait_for(subscribed, 5) is True  # Redis tracks writes over TLS too
    await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana")
    assert await asyncio.wait_for(first, 5) == KeysChanged(("acme-gym",))
    assert await asyncio.wait_for(anext(events), 5) == ModeEvent("acme-gym", Mode.SETUP)
    await events.aclose()
    assert await store.modes() == {"acme-gym": "setup"}
    assert [change.mode for change in await store.history("acme-gym")] == [Mode.SETUP]


@pytest.mark.parametrize("left_out", ["ssl_ca_certs", "ssl_certfile"])
async def test_without_the_ca_or_a_client_certificate_nothing_connects(
    tls_redis: RedisServer, certs: Path, prefix: str, left_out: str
) -> None:
    tls = {
        "ssl_ca_certs": certs / "ca.crt",
        "ssl_certfile": certs / "client.crt",
        "ssl_keyfile": certs / "client.key",
    }
    del tls[left_out]
    if left_out == "ssl_certfile":
        del tls["ssl_keyfile"]
    store = open_store(settings(tls_redis, prefix, **tls))
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
