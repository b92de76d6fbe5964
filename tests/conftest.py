from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import RedisServer, unique_prefix


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the run; tests keep apart by key prefix. Do not stop it."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one test alone: it may be stopped, killed and restarted."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return unique_prefix()
