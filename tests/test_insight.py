"""Transition insight end to end: referrers and shadow parity through a real edge on loopback,
counts in a real Redis, the admin API, the CLI and the tenant's dashboard page."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge import config
from edge.activation.referrers import PENDING_PER_TENANT, Referrers, clean, own_hosts
from edge.config import StoreSettings
from edge.core.asgi import Receive, Scope, Send
from edge.modes import ModeStore, open_store
from edge.modes.traffic import (
    KEEP_SLACK,
    LATENCY_BOUNDS_MS,
    REFERRERS_KEPT,
    Disagreement,
    ParityCounts,
    TrafficCounts,
    latency_bucket,
    p95_ms,
)
from tests.support.cli import run_cli, write_cli_config
from tests.support.dashboard import log_in
from tests.support.ports import free_port
from tests.support.redis import ClusterServers, RedisServer
from tests.support.servers import ServerThread
from tests.support.settings import ADMIN_TOKEN, LEGACY_HOST, NEW_HOST
from tests.support.stack import Stack, stack
from tests.support.waiting import eventually

LEGACY = {"Host": LEGACY_HOST}
SHADOW_ON = {"sample_rate": 1.0}


def edge_cli(tmp_path: Path, redis_server: RedisServer, prefix: str, *args: str, **env: str) -> str:
    """`edge ARGS` against the test's Redis; its stdout (exit status checked by the caller)."""
    path = write_cli_config(
        tmp_path / "edge.toml",
        redis_server.url,
        prefix,
        legacy="http://127.0.0.1:9",
        new="http://127.0.0.1:9",
        hosts=(LEGACY_HOST, NEW_HOST),
    )
    done = run_cli(*args, "--config", str(path), env=env)
    return f"{done.returncode}\n{done.stdout}{done.stderr}"


# Referrers


def test_referrers_are_outside_pages_without_query_or_fragment_most_first(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme", "legacy")  # a key: counted
    with stack(redis_server.url, prefix) as edge, edge.client() as client:
        sent = [
            "https://acme-gym.example/join?utm_source=mail#prices",
            "https://acme-gym.example/join?utm_source=blog",
            "https://acme-gym.example/join",
            "https://user:secret@blog.example:8443/post/1?x=1",
            # The portals' own pages, in any spelling: customers clicking on.
            f"https://{LEGACY_HOST}/acme/classes?week=2",
            f"https://{LEGACY_HOST.upper()}/acme/",
            f"http://{NEW_HOST}:443/acme/schedule",
            # Not pages anyone links from.
            "android-app://com.example.app/",
            "not a url",
            "https://",
            "https://overlong.example/" + "a" * 2000,
        ]
        for referer in sent:
            assert client.get("/acme/classes", headers={**LEGACY, "Referer": referer}).json() == {
                "backend": "legacy",
                "path": "/acme/classes",
            }
        edge.legacy.statuses["/acme/gone"] = 404
        client.get("/acme/gone", headers={**LEGACY, "Referer": "https://acme-gym.example/old"})
        with edge.admin() as admin:

            def listed() -> list[dict[str, Any]]:
                answer = admin.get("/api/tenants/acme/referrers")
                assert answer.status_code == 200
                body: dict[str, Any] = answer.json()
                assert body["tenant"] == "acme"
                return list(body["referrers"])

            eventually(lambda: len(listed()) == 3)
            found = listed()
    assert (found[0]["referrer"], found[0]["hits"]) == ("https://acme-gym.example/join", 3)
    assert {(r["referrer"], r["hits"]) for r in found[1:]} == {
        ("https://acme-gym.example/old", 1),  # a page the portal lacks: still an old link
        ("https://blog.example:8443/post/1", 1),
    }
    assert all(r["last_seen"].startswith("20") for r in found)
    cli = edge_cli(tmp_path, redis_server, prefix, "tenant", "referrers", "acme")
    assert cli.startswith("0\n")
    assert "       3  " in cli and "https://acme-gym.example/join" in cli
    assert "utm_source" not in cli


def test_referrers_are_counted_only_for_tenants_with_a_key(
    redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme", "setup")
    outside = {**LEGACY, "Referer": "https://links.example/page"}
    with stack(redis_server.url, prefix) as edge, edge.client() as client:
        for n in range(20):
            client.get(f"/made-up-{n}/", headers=outside)
        client.get("/acme/", headers=outside)  # the positive control
        with edge.admin() as admin:
            eventually(lambda: admin.get("/api/tenants/acme/referrers").json()["referrers"])
            assert admin.get("/api/tenants/made-up-1/referrers").json()["referrers"] == []
    assert redis_server.cli("KEYS", f"{prefix}referrers*made-up*") == ""


def test_a_flood_of_referrers_grows_neither_memory_nor_redis_beyond_a_bound(
    redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme", "legacy")
    flood = 3 * REFERRERS_KEPT * KEEP_SLACK
    with stack(redis_server.url, prefix) as edge, edge.client() as client:
        for n in range(flood):
            referer = f"https://spam-{n}.example/{n}?q={n}"
            client.get("/acme/", headers={**LEGACY, "Referer": referer})
        scraped = httpx.get(f"{edge.admin_url}/metrics").text
    kept = REFERRERS_KEPT * KEEP_SLACK
    assert int(redis_server.cli("ZCARD", f"{prefix}referrers:acme")) == kept
    assert int(redis_server.cli("HLEN", f"{prefix}referrers-seen:acme")) <= kept
    # Exactly the two keys, whatever the flood.
    assert sorted(redis_server.cli("KEYS", f"{prefix}referrers*").split()) == [
        f"{prefix}referrers-seen:acme",
        f"{prefix}referrers:acme",
    ]
    assert "edge_referrers_uncounted_total" in scraped


def test_referrers_held_between_flushes_are_bounded_per_tenant() -> None:
    settings = config.from_mapping(
        {
            "legacy": {"hosts": [LEGACY_HOST], "backend": "http://l", "public_url": "https://l"},
            "new": {"hosts": [NEW_HOST], "backend": "http://n", "public_url": "https://n"},
        }
    )
    referrers = Referrers(settings, keyed=lambda tenant: True)
    for n in range(10 * PENDING_PER_TENANT):
        referrers.seen("acme", f"https://spam-{n}.example/".encode())
    referrers.seen("acme", b"https://spam-0.example/")  # a page held still counts
    referrers.seen("other", b"https://links.example/")  # another tenant has its own room
    referrers.seen("other", b"https://l/own-public-page")  # a portal's public host: not held
    assert referrers.dropped == 9 * PENDING_PER_TENANT
    counted, _ = referrers.take()
    assert len(counted["acme"]) == PENDING_PER_TENANT
    assert counted["acme"]["https://spam-0.example/"] == 2
    assert counted["other"] == {"https://links.example/": 1}
    assert referrers.take() == ({}, {})


@pytest.mark.parametrize(
    ("referer", "page"),
    [
        ("https://site.example/a/b?c=d#e", "https://site.example/a/b"),
        ("http://Site.Example:8080", "http://site.example:8080/"),
        ("https://u:p@site.example/", "https://site.example/"),
        ("https://[2001:db8::1]:8443/x", "https://[2001:db8::1]:8443/x"),
        ("https://acme.portal.example/", None),  # a {tenant} public URL's host
        ("https://parents.test/acme/", None),
        ("https://site.example:99999/", None),  # malformed port
        ("ftp://site.example/", None),
        ("//site.example/", None),
    ],
)
def test_a_referer_is_counted_as_its_page(referer: str, page: str | None) -> None:
    settings = config.from_mapping(
        {
            "legacy": {"hosts": [LEGACY_HOST], "backend": "http://l", "public_url": "https://l"},
            "new": {
                "hosts": ["*.portal.example"],
                "tenant": "subdomain",
                "backend": "http://n",
                "public_url": "https://{tenant}.portal.example",
            },
        }
    )
    exact, suffixes = own_hosts(settings)
    assert clean(referer, exact, suffixes) == page


def test_an_active_tenants_old_links_are_counted_per_day_on_its_page(
    redis_server: RedisServer, prefix: str
) -> None:
    with stack(redis_server.url, prefix) as edge, edge.client() as client:
        with edge.admin() as admin:
            for mode in ("setup", "active"):
                moved = admin.put(
                    "/api/tenants/dance",
                    json={"mode": mode},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                assert moved.status_code == 200, moved.text
            outside = {**LEGACY, "Referer": "https://dance-school.example/timetable"}
            for _ in range(3):
                answer = client.get("/dance/classes", headers=outside)
                assert answer.status_code == 302
            eventually(lambda: admin.get("/api/tenants/dance/referrers").json()["referrers"])
        page = page_of(edge, "dance")
    assert 'id="legacy-days"' in page
    assert "<td>3</td>" in page
    assert "https://dance-school.example/timetable" in page


# Shadow parity


def test_check_config_says_what_the_shadow_mirrors(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    on = edge_cli(tmp_path, redis_server, prefix, "check-config", EDGE_SHADOW__SAMPLE_RATE="0.005")
    assert on.startswith("0\n")
    assert "shadow       0.5% of setup tenants' legacy reads mirrored (queue 100" in on
    assert "shadow" not in edge_cli(tmp_path, redis_server, prefix, "check-config")


@contextmanager
def shadowed(redis_server: RedisServer, prefix: str, **shadow: Any) -> Iterator[Stack]:
    redis_server.cli("SET", f"{prefix}mode:acme", "setup")
    with stack(redis_server.url, prefix, shadow={**SHADOW_ON, **shadow}) as edge:
        yield edge


def page_of(edge: Stack, tenant: str) -> str:
    """The tenant's dashboard page, logged in."""
    with log_in(edge, "ops") as admin:
        page = admin.get(f"/tenants/{tenant}")
        assert page.status_code == 200
        return page.text


def mirrors(edge: Stack) -> list[Any]:
    return [seen for seen in edge.new.seen if seen.header("x-edge-shadow") == "1"]


CREDENTIALS = {
    "Cookie": "session=customer-secret",
    "Authorization": "Bearer customer-secret",
    "Proxy-Authorization": "Basic customer-secret",
    "X-Api-Key": "customer-secret",
    "X-Forwarded-For": "203.0.113.9",
}


def test_a_plain_read_is_mirrored_at_the_mapped_path_without_credentials(
    redis_server: RedisServer, prefix: str
) -> None:
    with shadowed(redis_server, prefix) as edge, edge.client() as client:
        headers = {**LEGACY, **CREDENTIALS, "Accept-Language": "de"}
        answer = client.get("/acme/classes?week=3", headers=headers)
        assert answer.json() == {"backend": "legacy", "path": "/acme/classes"}
        eventually(lambda: len(mirrors(edge)) == 1)
    (mirror,) = mirrors(edge)
    assert (mirror.method, mirror.path, mirror.query) == ("GET", "/acme/schedule", "week=3")
    assert mirror.header("x-edge-mode") == "setup"
    assert mirror.header("x-edge-tenant") == "acme"
    assert mirror.header("accept-language") == "de"  # the positive control for headers
    assert mirror.body == b""
    carried = " ".join(f"{name}: {value}" for name, value in mirror.headers)
    assert "customer-secret" not in carried
    assert "203.0.113.9" not in carried
    assert mirror.header("cookie") is None and mirror.header("authorization") is None


def test_writes_and_reads_that_may_be_writes_are_never_mirrored(
    redis_server: RedisServer, prefix: str
) -> None:
    with shadowed(redis_server, prefix) as edge, edge.client() as client:
        client.post("/acme/enrol", headers=LEGACY, content=b"class=1")
        client.put("/acme/profile", headers=LEGACY, content=b"x")
        client.delete("/acme/booking/1", headers=LEGACY)
        client.request("GET", "/acme/with-body", headers=LEGACY, content=b"x=1")
        client.get("/acme/override", headers={**LEGACY, "X-HTTP-Method-Override": "DELETE"})
        client.get("/acme/query-override?_method=DELETE", headers=LEGACY)
        client.options("/acme/options", headers=LEGACY)
        client.get("/swim/legacy-tenant", headers=LEGACY)  # no key: legacy, not setup
        client.get("/acme/last", headers=LEGACY)  # the positive control, sent last
        eventually(lambda: [m.path for m in mirrors(edge)] == ["/acme/"])  # unmapped: home
        client.get("/acme/after", headers=LEGACY)
        eventually(lambda: len(mirrors(edge)) == 2)
    assert len(edge.legacy.seen) == 10  # every customer request still reached its portal
    assert all(m.method == "GET" and m.body == b"" for m in mirrors(edge))


def test_disagreements_are_listed_and_refuse_activation(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> None:
    with shadowed(redis_server, prefix) as edge, edge.client() as client:
        edge.new.statuses["/acme/schedule"] = 404  # the page the classes map to is missing
        edge.new.statuses["/acme/"] = 500
        for path in ["/acme/classes", "/acme/classes", "/acme/prices", "/acme/classes"]:
            assert client.get(path, headers=LEGACY).status_code == 200
        with edge.admin() as admin:
            eventually(lambda: admin.get("/api/tenants/acme/parity").json()["mirrored"] == 4)
            parity = admin.get("/api/tenants/acme/parity").json()
            refused = admin.put(
                "/api/tenants/acme",
                json={"mode": "active"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
        page = page_of(edge, "acme")
    assert parity["tenant"] == "acme"
    assert (parity["mirrored"], parity["agreeing"]) == (4, 0)
    assert [
        (d["path"], d["legacy_status"], d["new_status"], d["hits"]) for d in parity["disagreeing"]
    ] == [("/acme/classes", 200, 404, 3), ("/acme/prices", 200, 500, 1)]
    assert parity["legacy_ms_p95"] is not None and parity["new_ms_p95"] is not None
    assert refused.status_code == 409
    assert "/acme/classes → /acme/schedule (legacy 200, new 404" in refused.json()["error"]
    assert redis_server.cli("GET", f"{prefix}mode:acme") == "setup"
    assert 'id="parity"' in page and "/acme/schedule" in page
    cli = edge_cli(tmp_path, redis_server, prefix, "tenant", "parity", "acme")
    assert cli.startswith("1\n") and "0 of 4 mirrored reads agree" in cli
    assert "/acme/classes → /acme/schedule  (blocks activation)" in cli
    cli_move = edge_cli(tmp_path, redis_server, prefix, "tenant", "set", "acme", "active")
    assert cli_move.startswith("1\n") and "shadow parity" in cli_move


def test_a_page_fixed_stops_blocking_activation(redis_server: RedisServer, prefix: str) -> None:
    with shadowed(redis_server, prefix) as edge, edge.client() as client:
        edge.new.statuses["/acme/schedule"] = 404
        client.get("/acme/classes", headers=LEGACY)
        with edge.admin() as admin:

            def disagreeing() -> list[Any]:
                return list(admin.get("/api/tenants/acme/parity").json()["disagreeing"])

            eventually(lambda: len(disagreeing()) == 1)
            del edge.new.statuses["/acme/schedule"]  # the page now exists
            client.get("/acme/classes", headers=LEGACY)
            eventually(lambda: disagreeing() == [])
            moved = admin.put(
                "/api/tenants/acme",
                json={"mode": "active"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
    assert moved.status_code == 200, moved.text
    assert "shadow parity: 1 of 2 mirrored reads agree" in moved.json()["change"]["note"]


def test_agreeing_reads_let_activation_through(redis_server: RedisServer, prefix: str) -> None:
    with shadowed(redis_server, prefix) as edge, edge.client() as client:
        client.get("/acme/classes", headers=LEGACY)
        with edge.admin() as admin:
            eventually(lambda: admin.get("/api/tenants/acme/parity").json()["agreeing"] == 1)
            moved = admin.put(
                "/api/tenants/acme",
                json={"mode": "active"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
    assert moved.status_code == 200, moved.text
    assert "shadow parity: 1 of 1 mirrored reads agree" in moved.json()["change"]["note"]


class SlowPortal:
    """Answers 200 after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.started += 1
        await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"slow"})


def test_a_slow_new_portal_drops_mirrors_never_customers(
    redis_server: RedisServer, prefix: str
) -> None:
    with ServerThread(SlowPortal(3.0), log_level="warning") as slow:
        redis_server.cli("SET", f"{prefix}mode:acme", "setup")
        with (
            stack(
                redis_server.url,
                prefix,
                shadow={**SHADOW_ON, "queue": 2, "concurrency": 1, "timeout": 1},
                new={"backend": slow.url},
            ) as edge,
            edge.client() as client,
        ):
            for n in range(20):
                answer = client.get(f"/acme/page-{n}", headers=LEGACY)
                assert answer.json() == {"backend": "legacy", "path": f"/acme/page-{n}"}
            scraped = httpx.get(f"{edge.admin_url}/metrics").text
            with edge.admin() as admin:
                eventually(lambda: admin.get("/api/tenants/acme/parity").json()["mirrored"] >= 1)
                parity = admin.get("/api/tenants/acme/parity").json()
    dropped = [line for line in scraped.splitlines() if line.startswith("edge_shadow_dropped")]
    assert dropped and float(dropped[0].split()[-1]) > 0
    # Timed out: no answer, listed as such.
    assert parity["disagreeing"][0]["new_status"] == 0


def test_a_new_portal_that_is_down_never_reaches_customers(
    redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme", "setup")
    down = f"http://127.0.0.1:{free_port()}"
    with (
        stack(redis_server.url, prefix, shadow=SHADOW_ON, new={"backend": down}) as edge,
        edge.client() as client,
    ):
        for _ in range(5):
            answer = client.get("/acme/classes", headers=LEGACY)
            assert answer.json() == {"backend": "legacy", "path": "/acme/classes"}
        with edge.admin() as admin:
            eventually(lambda: admin.get("/api/tenants/acme/parity").json()["mirrored"] == 5)
            parity = admin.get("/api/tenants/acme/parity").json()
    assert parity["disagreeing"] == [
        {
            "path": "/acme/classes",
            "new_path": "/acme/schedule",
            "legacy_status": 200,
            "new_status": 0,
            "hits": 5,
            "blocks_activation": True,
        }
    ]
    assert parity["new_ms_p95"] is None  # no answer is no latency


def test_with_sample_rate_zero_nothing_is_mirrored(redis_server: RedisServer, prefix: str) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme", "setup")
    with stack(redis_server.url, prefix) as edge, edge.client() as client:
        client.get("/acme/classes", headers=LEGACY)
        client.get("/acme/on-new", headers={"Host": NEW_HOST})  # the control: new is reached
        eventually(lambda: len(edge.new.seen) == 1)
        assert edge.edge.traffic.shadow is None
    assert mirrors(edge) == []
    assert json.dumps(edge.new.seen[0].headers).count("x-edge-shadow") == 0


# The stores: the same counts, added up the same way, in memory and in Redis.


def parity(**fields: Any) -> TrafficCounts:
    return TrafficCounts(parity={"acme": ParityCounts(**fields)})


async def test_stores_add_parity_up_and_forget_fixed_paths(store: ModeStore) -> None:
    missing = Disagreement("/acme/classes", "/acme/schedule", 200, 404)
    broken = Disagreement("/acme/prices", "/acme/", 200, 500)
    await store.add_traffic(
        parity(
            mirrored=5,
            agreeing=2,
            disagreeing={missing: 2, broken: 1},
            latency={"legacy": {1: 5}, "new": {3: 4}},
        ),
        keep=10,
    )
    await store.add_traffic(
        parity(mirrored=2, agreeing=1, disagreeing={missing: 1}, latency={"new": {9: 1}}), keep=10
    )
    found = await store.parity("acme")
    assert (found.mirrored, found.agreeing) == (7, 3)
    assert found.disagreeing == {missing: 3, broken: 1}
    assert found.latency == {"legacy": {1: 5}, "new": {3: 4, 9: 1}}
    await store.add_traffic(parity(mirrored=1, agreeing=1, fixed={"/acme/prices"}), keep=10)
    assert (await store.parity("acme")).disagreeing == {missing: 3}
    assert (await store.parity("other")) == ParityCounts()


async def test_stores_keep_referrers_and_legacy_days(store: ModeStore) -> None:
    first = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
    await store.add_traffic(
        TrafficCounts(
            referrers={"acme": {"https://a.example/": 2, "https://b.example/": 1}},
            legacy_hits={"acme": 4},
            at=first,
        ),
        keep=10,
    )
    later = first + timedelta(days=1)
    await store.add_traffic(
        TrafficCounts(
            referrers={"acme": {"https://b.example/": 5}}, legacy_hits={"acme": 1}, at=later
        ),
        keep=10,
    )
    assert await store.referrers("acme", 10) == [
        ("https://b.example/", 6, later),
        ("https://a.example/", 2, first),
    ]
    assert await store.referrers("acme", 1) == [("https://b.example/", 6, later)]
    assert await store.legacy_hits("acme", ["2027-02-28", "2027-03-01", "2027-03-02"]) == [0, 4, 1]
    assert await store.referrers("other", 10) == []


def test_p95_is_the_upper_bound_of_its_bucket() -> None:
    assert p95_ms({}) is None
    assert p95_ms({0: 94, 5: 6}) == LATENCY_BOUNDS_MS[5]
    assert p95_ms({0: 95, 5: 5}) == LATENCY_BOUNDS_MS[0]
    assert p95_ms({len(LATENCY_BOUNDS_MS): 1}) == LATENCY_BOUNDS_MS[-1]
    assert latency_bucket(0.3) == 0 and latency_bucket(10**6) == len(LATENCY_BOUNDS_MS)


async def test_a_cluster_keeps_the_insight_across_its_slots(prefix: str) -> None:
    cluster = ClusterServers(masters=3).start()
    try:
        store = open_store(StoreSettings(url=cluster.url, prefix=prefix))
        kept = REFERRERS_KEPT * KEEP_SLACK
        try:
            for tenant in ("acme", "swim", "dance"):  # their keys fall on different nodes
                flood = {f"https://spam-{n}.example/": 1 for n in range(kept + 50)}
                missing = Disagreement(f"/{tenant}/a", f"/{tenant}/b", 200, 404)
                await store.add_traffic(
                    TrafficCounts(
                        referrers={tenant: flood},
                        legacy_hits={tenant: 2},
                        parity={tenant: ParityCounts(2, 0, {missing: 2})},
                    ),
                    keep=10,
                )
                await store.add_traffic(
                    TrafficCounts(parity={tenant: ParityCounts(1, 1, fixed={f"/{tenant}/a"})}),
                    keep=10,
                )
                assert len(await store.referrers(tenant, 10 * kept)) == kept
                assert (await store.parity(tenant)).disagreeing == {}
                today = datetime.now(UTC).date().isoformat()
                assert await store.legacy_hits(tenant, [today]) == [2]
            seen = [
                int(cluster.cli("HLEN", f"{prefix}referrers-seen:{tenant}"))
                for tenant in ("acme", "swim", "dance")
            ]
            assert seen == [kept] * 3
        finally:
            await store.close()
    finally:
        cluster.stop()
