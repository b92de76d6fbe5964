"""Deep-link memory: the router's in-memory tally, its flush, and the store's bounded counts."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edge import config
from edge.activation.traffic import MAX_PATH, Traffic, normalise
from edge.config import StoreSettings
from edge.modes import ModeStore, open_store
from edge.modes.traffic import KEEP_SLACK, TrafficCounts
from edge.moves.service import Moves
from tests.support.redis import RedisServer
from tests.support.settings import LEGACY_HOST, NEW_HOST, example_settings
from tests.support.stack import stack
from tests.support.waiting import eventually

SETTINGS = example_settings(policy={"deep_links": 3})


def links(**tenants: dict[str, int]) -> TrafficCounts:
    return TrafficCounts(deep_links={tenant.replace("_", "-"): p for tenant, p in tenants.items()})


async def test_deep_links_add_up_across_flushes_most_requested_first(store: ModeStore) -> None:
    await store.add_traffic(links(acme={"/acme/": 5, "/acme/classes": 2}), keep=10)
    await store.add_traffic(links(acme={"/acme/classes": 4, "/acme/pay": 1}), keep=10)
    await store.add_traffic(links(other={"/other/": 9}), keep=10)

    assert await store.deep_links("acme", 10) == [
        ("/acme/classes", 6),
        ("/acme/", 5),
        ("/acme/pay", 1),
    ]
    assert await store.deep_links("acme", 1) == [("/acme/classes", 6)]
    assert await store.deep_links("other", 10) == [("/other/", 9)]
    assert await store.deep_links("nobody", 10) == []


async def test_deep_links_are_bounded_to_the_most_requested(store: ModeStore) -> None:
    keep = 2
    paths = {f"/acme/page-{n}": n for n in range(1, 11)}  # page-10 is the most requested
    await store.add_traffic(links(acme=paths), keep=keep)

    kept = await store.deep_links("acme", 100)
    assert len(kept) == keep * KEEP_SLACK
    assert kept == [(f"/acme/page-{n}", n) for n in range(10, 10 - keep * KEEP_SLACK, -1)]
    # A path on its way up gets in once it is requested more than the least of the kept ones.
    await store.add_traffic(links(acme={"/acme/new": 8}), keep=keep)
    assert ("/acme/new", 8) in await store.deep_links("acme", keep * KEEP_SLACK)
    assert ("/acme/page-7", 7) not in await store.deep_links("acme", 100)


async def test_responses_add_up_per_phase(store: ModeStore) -> None:
    counts = TrafficCounts(responses={"acme": {"setup": {"2xx": 3, "404": 1}}})
    await store.add_traffic(counts, keep=10)
    await store.add_traffic(
        TrafficCounts(responses={"acme": {"setup": {"2xx": 2}, "active": {"5xx": 1}}}), keep=10
    )
    assert await store.responses("acme") == {
        "setup": {"2xx": 5, "404": 1},
        "active": {"5xx": 1},
    }
    assert await store.responses("other") == {}


def traffic_for(store: ModeStore, **policy: Any) -> Traffic:
    raw = SETTINGS.model_dump(by_alias=True)
    raw["policy"].update(policy)
    return Traffic(store, config.from_mapping(raw))


async def keyed(store: ModeStore, tenant: str = "acme") -> None:
    """Give the tenant a routing key: only such tenants' traffic is written."""
    await Moves(store).set_mode(tenant, "setup", actor="test")


async def test_the_tally_flushes_normalised_paths_and_status_classes(store: ModeStore) -> None:
    await keyed(store)
    traffic = traffic_for(store)
    for path in ["/acme/classes", "/acme//classes", "/acme/classes", "/acme/", "/x" * MAX_PATH]:
        traffic.deep_link("acme", path)
    for status in [200, 204, 301, 404, 404, 403, 500, 503, 499]:
        traffic.response("acme", "setup", status)
    await traffic.flush()

    assert await store.deep_links("acme", 10) == [("/acme/classes", 3), ("/acme/", 1)]
    assert await store.responses("acme") == {
        "setup": {"2xx": 2, "3xx": 1, "404": 2, "4xx": 1, "5xx": 2}
    }
    await traffic.flush()  # nothing new: nothing added twice
    assert await store.deep_links("acme", 10) == [("/acme/classes", 3), ("/acme/", 1)]


async def test_a_tenant_without_a_routing_key_is_never_written(store: ModeStore) -> None:
    await keyed(store, "acme")
    traffic = traffic_for(store)
    for n in range(50):
        traffic.deep_link(f"made-up-{n}", f"/made-up-{n}/")
        traffic.response(f"made-up-{n}", "setup", 200)
    traffic.deep_link("acme", "/acme/")
    traffic.response("acme", "setup", 200)
    await traffic.flush()

    assert await store.deep_links("acme", 10) == [("/acme/", 1)]
    assert await store.responses("acme") == {"setup": {"2xx": 1}}
    for n in range(50):
        assert await store.deep_links(f"made-up-{n}", 10) == []
        assert await store.responses(f"made-up-{n}") == {}


async def test_the_tally_is_bounded_between_flushes(store: ModeStore) -> None:
    await keyed(store)
    traffic = traffic_for(store)
    traffic.max_pending = 3
    for n in range(10):
        traffic.deep_link("acme", f"/acme/{n}")
    traffic.deep_link("acme", "/acme/0")  # known keys still count when full
    assert traffic.dropped == 7
    await traffic.flush()
    assert await store.deep_links("acme", 10) == [("/acme/0", 2), ("/acme/2", 1), ("/acme/1", 1)]
    traffic.deep_link("acme", "/acme/9")  # room again after a flush
    await traffic.flush()
    assert ("/acme/9", 1) in await store.deep_links("acme", 10)


async def test_a_flush_that_cannot_reach_the_store_drops_its_counts_and_recovers(
    own_redis: RedisServer, prefix: str
) -> None:
    store = open_store(StoreSettings(url=own_redis.url, prefix=prefix, timeout=0.5))
    try:
        traffic = traffic_for(store)
        traffic.deep_link("acme", "/acme/lost")
        traffic.response("acme", "setup", 200)
        own_redis.stop()
        await traffic.flush()  # logged, not raised
        own_redis.start()
        await keyed(store)  # a Redis started afresh
        traffic.deep_link("acme", "/acme/kept")
        await traffic.flush()
        assert await store.deep_links("acme", 10) == [("/acme/kept", 1)]
        registry = CollectorRegistry()
        registry.register(traffic)
        assert registry.get_sample_value("edge_traffic_uncounted_total") == 2
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/acme/classes", "/acme/classes"),
        ("/acme//classes///42", "/acme/classes/42"),
        ("/acme/classes/", "/acme/classes/"),
        ("/", "/"),
        ("/" + "a" * MAX_PATH, None),
    ],
)
def test_normalised_paths(path: str, normal: str | None) -> None:
    assert normalise(path) == normal


# End to end: customers' requests through a real edge, counts in a real Redis.

LEGACY = {"Host": LEGACY_HOST}
NEW = {"Host": NEW_HOST}


def recorded(redis_server: RedisServer, prefix: str, tenant: str) -> dict[str, int]:
    flat = redis_server.cli("ZRANGE", f"{prefix}deeplinks:{tenant}", "0", "-1", "WITHSCORES")
    items = flat.split("\n") if flat else []
    return {path: int(count) for path, count in zip(items[::2], items[1::2], strict=True)}


def test_legacy_paths_customers_request_are_recorded_with_counts(
    redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme", "legacy")  # a key: counted
    redis_server.cli("SET", f"{prefix}mode:swim", "setup")
    redis_server.cli("SET", f"{prefix}mode:dance", "active")
    with stack(redis_server.url, prefix) as edge, edge.client() as client:
        edge.legacy.statuses["/acme/gone"] = 404
        for _ in range(3):
            client.get("/acme/classes?week=3", headers=LEGACY)
        client.get("/acme//classes", headers=LEGACY)
        client.get("/acme/", headers=LEGACY)
        client.get("/swim/pool", headers=LEGACY)  # setup tenants' customers too
        # Not bookmarks: a page the legacy portal lacks, writes, HEAD, the new front, and
        # an active tenant's legacy URLs (redirected, never forwarded).
        client.get("/acme/gone", headers=LEGACY)
        client.post("/acme/classes", headers=LEGACY, content=b"enrol=1")
        client.head("/acme/head-only", headers=LEGACY)
        client.get("/acme/on-new", headers=NEW)
        client.get("/dance/classes", headers=LEGACY)
        client.get("/swim/last", headers=LEGACY)  # once it is in, so is everything before it

        eventually(lambda: "/swim/last" in recorded(redis_server, prefix, "swim"))
        assert recorded(redis_server, prefix, "acme") == {"/acme/classes": 4, "/acme/": 1}
        assert recorded(redis_server, prefix, "swim") == {"/swim/pool": 1, "/swim/last": 1}
        assert recorded(redis_server, prefix, "dance") == {}


def test_recorded_deep_links_are_bounded_per_tenant(redis_server: RedisServer, prefix: str) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme", "legacy")
    with (
        stack(redis_server.url, prefix, policy={"deep_links": 2}) as edge,
        edge.client() as client,
    ):
        for n in range(1, 9):
            for _ in range(n):
                client.get(f"/acme/page-{n}", headers=LEGACY)
    # Stopping the edge writes what it still holds.
    kept = recorded(redis_server, prefix, "acme")
    # 2 reported plus 2 of slack. Flushes fall anywhere in the traffic, so a path whose first
    # requests were trimmed away may count fewer than it had; the least requested never stays.
    assert len(kept) == 2 * KEEP_SLACK
    assert "/acme/page-8" in kept
    assert "/acme/page-1" not in kept
    assert all(kept[f"/acme/page-{n}"] <= n for n in range(1, 9) if f"/acme/page-{n}" in kept)
