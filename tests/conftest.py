from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge.config import StoreSettings
from edge.modes import ModeStore, open_store
from tests.support.cli import write_cli_config
from tests.support.redis import RedisServer, unique_prefix


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


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_server: RedisServer, prefix: str
) -> AsyncIterator[ModeStore]:
    """Each store kind the tests hold to one contract: in memory, and on the run's Redis.
    A module may override it (with a fixture of the same name that asks for this one)."""
    url = "memory://" if request.param == "memory" else redis_server.url
    opened = open_store(StoreSettings(url=url, prefix=prefix))
    yield opened
    await opened.close()


@pytest.fixture
def config_file(tmp_path: Path, redis_server: RedisServer, prefix: str) -> Path:
    """A config file for the CLI: the run's redis-server, the test's prefix."""
    return write_cli_config(tmp_path / "edge.toml", redis_server.url, prefix)
