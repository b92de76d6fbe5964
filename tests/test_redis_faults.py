"""Redis killed, restarted and slowed while customers keep coming: the router's mode cache.

tests/test_routing.py covers one request at a time through a clean stop and start; here Redis
dies (SIGKILL) or sleeps under a steady load, and every single answer is checked.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.redis import RedisServer
from tests.support.settings import ADMIN_TOKEN, LEGACY_HOST, NEW_HOST
from tests.support.stack import Stack, stack
from tests.support.waiting import eventually

# Cached tenants and what a customer must get for each, whatever Redis is doing.
CUSTOMERS = [
    ("/swim/schedule", NEW_HOST, 200),  # setup: the preview
    ("/dance/classes", LEGACY_HOST, 302),  # active: redirected
    ("/acme/", LEGACY_HOST, 200),  # legacy (no key)
]


@dataclass
class Load:
    """A few customers in threads, asking for cached tenants over and over."""

    base_url: str
    answers: list[tuple[str, int | str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def customer(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self.stop.is_set():
                for path, host, _ in CUSTOMERS:
                    try:
                        status: int | str = client.get(path, headers={"Host": host}).status_code
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    self.answers.append((path, status))

    def failures(self) -> list[tuple[str, int | str]]:
        expected = {path: status for path, _, status in CUSTOMERS}
        return [(path, got) for path, got in self.answers if got != expected[path]]


@contextmanager
def under_load(edge: Stack, customers: int = 3) -> Iterator[Load]:
    load = Load(edge.public_url)
    threads = [threading.Thread(target=load.customer, daemon=True) for _ in range(customers)]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(10)


def seeded(server: RedisServer, prefix: str) -> None:
    server.cli("SET", f"{prefix}mode:swim", "setup")
    server.cli("SET", f"{prefix}mode:dance", "active")


def answers_grow(load: Load, by: int = 30) -> Callable[[], bool]:
    """A check that passes once the load has had ``by`` more answers than now."""
    start = len(load.answers)
    return lambda: len(load.answers) >= start + by


def test_redis_killed_and_restarted_under_load(own_redis: RedisServer, prefix: str) -> None:
    seeded(own_redis, prefix)
    own_redis.cli("SAVE")  # as production's persistence: the restarted server has the keys
    with stack(own_redis.url, prefix) as edge, under_load(edge) as load:
        eventually(answers_grow(load))
        own_redis.stop()  # SIGKILL
        errors = edge.edge.cache.stats.store_errors
        eventually(lambda: edge.edge.cache.stats.store_errors > errors)
        eventually(answers_grow(load))  # customers kept coming while Redis was dead

        with edge.client() as client:
            unknown = client.get("/newcomer/", headers={"Host": LEGACY_HOST})
        assert unknown.status_code == 503
        assert unknown.headers["retry-after"].isdigit()
        assert "/newcomer/" not in [seen.path for seen in edge.legacy.seen]

        own_redis.start()
        # A raw edit made after the restart arrives within the resync bound...
        own_redis.cli("SET", f"{prefix}mode:yoga", "active")
        with edge.client() as client:
            eventually(
                lambda: client.get("/yoga/", headers={"Host": LEGACY_HOST}).status_code == 302
            )
            # ... and a change through edge at once, on the resubscribed events.
            with edge.admin() as admin:
                moved = admin.put(
                    "/api/tenants/pilates",
                    json={"mode": "active"},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
            assert moved.status_code == 200
            eventually(
                lambda: client.get("/pilates/", headers={"Host": LEGACY_HOST}).status_code == 302
            )
        eventually(answers_grow(load))

    assert load.failures() == []
    assert len(load.answers) >= 120


def asleep(server: RedisServer) -> bool:
    """Redis answers no PING within 0.2 s."""
    with socket.create_connection(("127.0.0.1", server.port), 1) as sock:
        sock.settimeout(0.2)
        sock.sendall(b"PING\r\n")
        try:
            return not sock.recv(64)
        except TimeoutError:
            return True


@pytest.fixture
def debuggable_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own that takes DEBUG SLEEP."""
    server = RedisServer(args=("--enable-debug-command", "yes")).start()
    yield server
    server.stop()


def test_a_sleeping_redis_never_stalls_cached_tenants(
    debuggable_redis: RedisServer, prefix: str
) -> None:
    seeded(debuggable_redis, prefix)
    with stack(debuggable_redis.url, prefix) as edge, edge.client() as client:
        for path, host, status in CUSTOMERS:
            assert client.get(path, headers={"Host": host}).status_code == status
        sleeper = threading.Thread(target=debuggable_redis.cli, args=("DEBUG", "SLEEP", "2"))
        sleeper.start()
        eventually(lambda: asleep(debuggable_redis))
        answered_while_asleep: list[int] = []
        while sleeper.is_alive():
            for path, host, status in CUSTOMERS:
                got = client.get(path, headers={"Host": host}).status_code
                assert got == status
                if sleeper.is_alive():
                    answered_while_asleep.append(got)
        sleeper.join()
    # Waiting on Redis, a customer would have been answered only after it woke.
    assert len(answered_while_asleep) >= 10


def test_the_subscription_killed_under_load_misses_no_edit(
    own_redis: RedisServer, prefix: str
) -> None:
    seeded(own_redis, prefix)
    # No resync within the test: only the reconnect can find an edit whose notice was lost.
    with stack(own_redis.url, prefix, store_settings={"resync_interval": 3600}) as edge:
        eventually(lambda: edge.edge.cache.listening)
        with under_load(edge) as load, edge.client() as client:
            assert client.get("/yoga/", headers={"Host": LEGACY_HOST}).status_code == 200
            own_redis.cli("SET", f"{prefix}mode:yoga", "active")  # positive control: noticed
            eventually(
                lambda: client.get("/yoga/", headers={"Host": LEGACY_HOST}).status_code == 302
            )
            assert client.get("/pilates/", headers={"Host": LEGACY_HOST}).status_code == 200
            eventually(answers_grow(load))
            # The edit and the subscription's end in one instant: its invalidation is lost.
            own_redis.transaction(
                ("SET", f"{prefix}mode:pilates", "active"), ("CLIENT", "KILL", "TYPE", "pubsub")
            )
            eventually(lambda: edge.edge.cache.stats.reconnects == 1)
            eventually(
                lambda: client.get("/pilates/", headers={"Host": LEGACY_HOST}).status_code == 302
            )
            eventually(answers_grow(load))
    assert load.failures() == []
