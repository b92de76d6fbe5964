"""edge on a three-master Redis Cluster: keys spread over slots, events heard on any node."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import StoreSettings
from edge.core.tenants import Mode
from edge.modes import open_store
from tests.support.cli import run_cli
from tests.support.fleet import (
    ANSWER,
    Traffic,
    answer,
    answers_as_set,
    fleet,
    fleet_config,
    set_modes,
)
from tests.support.redis import ClusterServers, RedisServer, redis_cli
from tests.support.waiting import eventually

MODES = {f"gym-{n:02}": (Mode.SETUP, Mode.ACTIVE)[n % 2] for n in range(24)}


@pytest.fixture
def cluster() -> Iterator[ClusterServers]:
    servers = ClusterServers(masters=3).start()
    yield servers
    servers.stop()


@pytest.fixture
def store(cluster: ClusterServers, prefix: str) -> dict[str, Any]:
    return {"url": cluster.url, "prefix": prefix}


async def all_pages(store: dict[str, Any]) -> dict[str, str]:
    """Every tenant, by following the page cursors (the admin API's listing) to the end."""
    opened = open_store(StoreSettings(**store))
    found: dict[str, str] = {}
    cursor: str | None = ""
    try:
        while cursor is not None:
            page = await opened.page(cursor, limit=5)
            found.update(page.tenants)
            cursor = page.cursor
    finally:
        await opened.close()
    return found


def holds(server: RedisServer, key: str) -> bool:
    """Whether the node serves the key's slot (another node answers MOVED)."""
    return not server.cli("EXISTS", key).startswith("MOVED")


def subscribers(servers: list[RedisServer], channel: str) -> int:
    """Classic subscriptions are per node: count them on every node."""
    return sum(int(server.cli("PUBSUB", "NUMSUB", channel).split()[1]) for server in servers)


def test_a_cluster_routes_lists_and_propagates_like_one_server(
    cluster: ClusterServers, store: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    set_modes(store, MODES)
    for server in cluster.servers:  # the tenants really are spread over the masters
        assert any(holds(server, f"{prefix}mode:{tenant}") for tenant in MODES)
    assert asyncio.run(all_pages(store)) == {t: mode.value for t, mode in MODES.items()}

    # No resync within the test: raw edits reach the instances by invalidation only.
    with fleet(2, store, resync_interval=3600) as instances:
        config = str(fleet_config(tmp_path / "edge.toml", store, instances[0]))
        listed = run_cli("tenant", "list", "--config", config)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == [word for t in sorted(MODES) for word in (t, MODES[t])]
        history = run_cli("tenant", "history", "gym-01", "--config", config)
        assert "legacy → active  by test-seed" in history.stdout
        for instance in instances:
            eventually(lambda i=instance: i.edge.cache.listening and i.edge.cache.tracked)
            assert {t: answer(instance, t) for t in MODES} == {
                t: ANSWER[mode] for t, mode in MODES.items()
            }
            assert answer(instance, "newcomer") == ANSWER[Mode.LEGACY]
        # Each instance subscribes on each master: each master reports its own keys' writes.
        assert subscribers(cluster.servers, f"{prefix}events") == 2 * 3
        assert all(subscribers([s], "__redis__:invalidate") == 2 for s in cluster.servers)

        moved = run_cli("tenant", "set", "newcomer", "active", "--config", config)
        assert moved.returncode == 0, moved.stderr
        eventually(lambda: [answer(i, "newcomer") for i in instances] == [302, 302])

        setup = [t for t, mode in MODES.items() if mode is Mode.SETUP]
        for tenant in setup:  # a raw edit on whichever node holds it: every master's keys
            cluster.cli("SET", f"{prefix}mode:{tenant}", "active")
        for instance in instances:
            eventually(lambda i=instance: all(answer(i, t) == 302 for t in setup), within=5)
            assert instance.edge.cache.stats.resyncs["periodic"].runs == 0


def test_a_failed_node_costs_no_request_and_its_successor_is_tracked(
    prefix: str, tmp_path: Path
) -> None:
    """Three masters, each with a replica; a master dies, its replica takes over."""
    cluster = ClusterServers(masters=3, replicas=1).start()
    try:
        store = {"url": cluster.url, "prefix": prefix}
        set_modes(store, MODES)
        channel = f"{prefix}events"
        with fleet(2, store, resync_interval=3600) as instances:
            config = str(fleet_config(tmp_path / "edge.toml", store, instances[0]))
            expected = answers_as_set(instances, MODES, unknown=("newcomer", "raw-during"))
            eventually(lambda: subscribers(cluster.servers, channel) == 2 * 3)
            victim = next(s for s in cluster.servers if subscribers([s], channel))
            survivors = [s for s in cluster.servers if s is not victim]
            key = f"{prefix}mode:raw-during"

            with Traffic(instances, expected) as traffic:
                victim.stop()
                # The others mark it failed after the node timeout (1 s); its replica
                # takes its slots over. Until then a new client cannot reach every slot.
                eventually(lambda: all(written_off(s, victim) for s in survivors), within=30)
                # A raw edit during the fault, on whichever node holds the key now: seen
                # whether or not the instances have subscribed to the new master yet.
                cluster_cli(survivors, "SET", key, "active")
                eventually(lambda: [answer(i, "raw-during") for i in instances] == [302, 302])
                # Subscribed again on every master, the promoted replica included.
                eventually(lambda: subscribers(survivors, channel) == 2 * 3, within=30)
                moved = run_cli("tenant", "set", "newcomer", "active", "--config", config)
                assert moved.returncode == 0, moved.stderr
                eventually(lambda: [answer(i, "newcomer") for i in instances] == [302, 302])
            assert traffic.wrong == []
            assert traffic.answered > 0

            for tenant in MODES:  # a raw edit on each master's keys, the new one's included
                cluster_cli(survivors, "SET", f"{prefix}mode:{tenant}", "active")
            eventually(lambda: all(answer(i, t) == 302 for i in instances for t in MODES))
            for instance in instances:
                assert instance.edge.cache.stats.resyncs["periodic"].runs == 0
    finally:
        cluster.stop()


def cluster_cli(servers: list[RedisServer], *args: str) -> str:
    """redis-cli in cluster mode through a live node."""
    return redis_cli(servers[0].port, "-c", *args)


def written_off(server: RedisServer, dead: RedisServer) -> bool:
    """Whether ``server`` has marked ``dead`` as failed, with no slots left on it."""
    for line in server.cli("CLUSTER", "NODES").splitlines():
        fields = line.split()
        if fields[1].startswith(f"127.0.0.1:{dead.port}@"):
            return "fail" in fields[2].split(",") and len(fields) == 8
    return False
