"""Transition insight against `edge serve`: a process of its own in front of two recording
portals on loopback, counts in a real Redis, read back through the admin listener.

tests/test_insight.py runs the router in-process; here what a customer and ops see of a real
process is checked: the customer always gets the Parent Portal's answer, a mirror carries no
write, cookie or authorization, a disagreement is listed and holds activation back, referrers
are counted as their pages, and a flood of them grows neither the process nor Redis beyond the
documented bounds (docs/activation.md, docs/limits.md "Traffic counts in Redis").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.process import EdgeProcess
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.servers import AsyncPortal
from tests.support.settings import ADMIN_TOKEN, LEGACY_HOST, NEW_HOST, settings_for
from tests.support.waiting import eventually

WAIT = 10.0  # how long a test waits for edge to act: many flush intervals
AUTHORIZED = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LEGACY = {"Host": LEGACY_HOST}
# The bound docs/limits.md gives for {prefix}referrers:{tenant} and referrers-seen.
REFERRERS_BOUND = 200
FLOOD = 20_000
FLOOD_CONNECTIONS = 8
RSS_BOUND = 32 * 2**20


# --- the portals ------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as a portal read it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-case
    body: bytes


class RecordingPortal(AsyncPortal):
    """A raw HTTP/1.1 portal, keep-alive: records every request (method, path, headers, body)
    and answers ``{name} {method} {path}``, with 200 or what ``statuses`` says for the path."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.seen: list[Seen] = []
        self.statuses: dict[str, int] = {}

    def of(self, tenant: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path.startswith(f"/{tenant}/")]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                line, *fields = head.split("\r\n")[:-2]
                method, target, _ = line.split(" ")
                headers: dict[str, str] = {}
                for name, _, value in (f.partition(":") for f in fields):
                    headers[name.strip().lower()] = value.strip()
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                        body += (await reader.readexactly(size + 2))[:-2]
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                else:
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                parts = urlsplit(target)
                self.seen.append(Seen(method, parts.path, parts.query, headers, body))
                answer = f"{self.name} {method} {parts.path}".encode()
                status = self.statuses.get(parts.path, 200)
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b"
                    % (status, len(answer), b"" if method == "HEAD" else answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


# --- edge -------------------------------------------------------------------------------------


@dataclass
class Edge:
    process: EdgeProcess
    legacy: RecordingPortal
    new: RecordingPortal
    redis: RedisServer
    prefix: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.process.url, headers=LEGACY, timeout=WAIT)

    def admin(self) -> httpx.Client:
        admin_url = f"http://127.0.0.1:{self.process.admin_port}"
        return httpx.Client(base_url=admin_url, timeout=WAIT)

    def redis_keys(self, pattern: str = "*") -> list[str]:
        return sorted(self.redis.cli("KEYS", f"{self.prefix}{pattern}").split())

    def mirrors(self, tenant: str) -> list[Seen]:
        return [seen for seen in self.new.of(tenant) if seen.headers.get("x-edge-shadow") == "1"]


# Tenants, one per test, with their keys set before edge starts. "acme" and "swim" are in
# setup (mirrored), "gym" and "flood" are keyed legacy tenants (referrers counted, nothing
# mirrored), "nokey" has no key at all.
MODES = {"acme": "setup", "swim": "setup", "gym": "legacy", "flood": "legacy"}


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    prefix = prefix_with_modes(redis_server, MODES)
    with RecordingPortal("legacy") as legacy, RecordingPortal("new") as new:
        raw = settings_for(
            legacy.url,
            new.url,
            redis_server.url,
            prefix,
            # Every plain read of a setup tenant mirrored, by one worker: mirrors reach the new
            # portal in the order the customers' requests ended. A queue with room for all of
            # a test's reads, so that none is dropped on a busy machine.
            shadow={"sample_rate": 1.0, "concurrency": 1, "queue": 1000},
            store={"flush_interval": 0.2},
        )
        with EdgeProcess(raw, tmp_path_factory.mktemp("insight")) as process:
            yield Edge(process, legacy, new, redis_server, prefix)


# --- shadow parity ----------------------------------------------------------------------------


def test_the_customer_gets_the_legacy_answer_and_only_plain_reads_are_mirrored_bare(
    edge: Edge,
) -> None:
    credentials = {"Cookie": "session=customer-secret", "Authorization": "Bearer customer-secret"}
    with edge.client() as customer:
        answer = customer.get("/acme/classes?week=3", headers=credentials)
        assert (answer.status_code, answer.text) == (200, "legacy GET /acme/classes")
        eventually(lambda: len(edge.mirrors("acme")) == 1, WAIT)  # the positive control

        # Writes, and a GET that carries a body, from the same customer.
        enrolled = customer.post("/acme/enrol", content=b"class=1", headers=credentials)
        assert enrolled.text == "legacy POST /acme/enrol"
        with_body = customer.request(
            "GET", "/acme/search?with=body", content=b"q=1", headers=credentials
        )
        assert with_body.text == "legacy GET /acme/search"
        # Then a plain read: its mirror arriving (at the tenant's home, the query kept) says
        # every earlier one would have by now.
        assert customer.get("/acme/after?control=1").text == "legacy GET /acme/after"
        eventually(lambda: any(m.query == "control=1" for m in edge.mirrors("acme")), WAIT)

    # The legacy portal got every request whole, with the customer's credentials.
    legacy = [(s.method, s.path, s.body) for s in edge.legacy.of("acme")]
    assert legacy == [
        ("GET", "/acme/classes", b""),
        ("POST", "/acme/enrol", b"class=1"),
        ("GET", "/acme/search", b"q=1"),  # the legacy front forwards a GET's body
        ("GET", "/acme/after", b""),
    ]
    assert edge.legacy.of("acme")[1].headers["cookie"] == "session=customer-secret"
    # The new portal got the two plain reads' mirrors and nothing else.
    arrived = edge.new.of("acme")
    assert [(s.method, s.path, s.query, s.body) for s in arrived] == [
        ("GET", "/acme/schedule", "week=3", b""),  # the path rule's mapping, the query kept
        ("GET", "/acme/", "control=1", b""),  # unmapped: the tenant's home
    ]
    for mirror in arrived:
        assert mirror.headers["x-edge-shadow"] == "1"
        assert mirror.headers["x-edge-mode"] == "setup"
        assert "cookie" not in mirror.headers and "authorization" not in mirror.headers
        assert "customer-secret" not in repr(mirror.headers)


def test_a_page_the_new_portal_lacks_is_listed_and_holds_activation_back(edge: Edge) -> None:
    """A rare page: readiness alone (97% of requests resolve) would let activation through."""
    edge.new.statuses["/swim/schedule"] = 404  # where /swim/classes goes once active
    with edge.client() as customer, edge.admin() as admin:
        for _ in range(3):
            assert customer.get("/swim/classes").text == "legacy GET /swim/classes"
        for _ in range(97):  # agree: the unmapped prices go to the tenant's home, which is there
            assert customer.get("/swim/prices").text == "legacy GET /swim/prices"

        def parity() -> dict[str, Any]:
            answer = admin.get("/api/tenants/swim/parity")
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        eventually(lambda: parity()["mirrored"] == 100, WAIT)
        report = parity()
        refused = admin.put("/api/tenants/swim", json={"mode": "active"}, headers=AUTHORIZED)
        mode_after_refusal = edge.redis.cli("GET", f"{edge.prefix}mode:swim")
        forced = admin.put(
            "/api/tenants/swim", json={"mode": "active", "force": True}, headers=AUTHORIZED
        )
    assert (report["mirrored"], report["agreeing"]) == (100, 97)
    assert report["disagreeing"] == [
        {
            "path": "/swim/classes",
            "new_path": "/swim/schedule",
            "legacy_status": 200,
            "new_status": 404,
            "hits": 3,
            "blocks_activation": True,
        }
    ]
    assert refused.status_code == 409, refused.text
    refusal = refused.json()["error"]
    assert "shadow parity" in refusal
    assert "/swim/classes → /swim/schedule (legacy 200, new 404" in refusal
    assert mode_after_refusal == "setup"
    assert forced.status_code == 200, forced.text
    assert edge.redis.cli("GET", f"{edge.prefix}mode:swim") == "active"


# --- referrers --------------------------------------------------------------------------------


def test_referrers_are_outside_pages_without_query_counted_only_for_keyed_tenants(
    edge: Edge,
) -> None:
    outside = "https://school.example/page?x=1#f"
    with edge.client() as customer, edge.admin() as admin:
        for n in range(5):  # a tenant without a key, first
            customer.get(f"/nokey/page-{n}", headers={"Referer": outside})
        for referer in [
            outside,
            outside,
            "https://school.example/page",
            "https://school.example/page?y=2",
            # The portals' own pages: customers clicking on, not links to fix.
            f"https://{LEGACY_HOST}/gym/classes?week=1",
            f"http://{NEW_HOST.upper()}:8080/gym/schedule",
        ]:
            answer = customer.get("/gym/classes", headers={"Referer": referer})
            assert answer.text == "legacy GET /gym/classes"

        def listed() -> list[tuple[str, int]]:
            answer = admin.get("/api/tenants/gym/referrers")
            assert answer.status_code == 200, answer.text
            return [(r["referrer"], r["hits"]) for r in answer.json()["referrers"]]

        eventually(lambda: listed() == [("https://school.example/page", 4)], WAIT)
        nokey = admin.get("/api/tenants/nokey/referrers").json()["referrers"]
    assert nokey == []
    assert len(edge.legacy.of("nokey")) == 5  # its requests were served all the same
    # The keyed tenant's counts are in Redis (the positive control); the other has no key.
    assert f"{edge.prefix}referrers:gym" in edge.redis_keys()
    assert edge.redis_keys("*nokey*") == []


async def _flood(port: int, requests: list[bytes], connections: int) -> list[int]:
    """``requests`` sent over ``connections`` keep-alive connections, one at a time on each;
    the statuses of the answers."""
    pending = iter(requests)
    statuses: list[int] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in pending:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                statuses.append(int(head[9:12]))
                length = 0
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return statuses


def test_a_flood_of_referrers_grows_neither_edge_nor_redis_beyond_their_bounds(
    edge: Edge,
) -> None:
    requests = [
        b"GET /flood/ HTTP/1.1\r\nHost: %b\r\nReferer: https://spam-%d.example/page-%d?q=%d"
        b"\r\n\r\n" % (LEGACY_HOST.encode(), n, n, n)
        for n in range(FLOOD)
    ]
    before = edge.process.peak_rss()
    started = time.monotonic()
    statuses = asyncio.run(
        asyncio.wait_for(_flood(edge.process.port, requests, FLOOD_CONNECTIONS), 60)
    )
    took = time.monotonic() - started
    grown = edge.process.peak_rss() - before
    assert statuses == [200] * FLOOD
    assert len(edge.legacy.of("flood")) == FLOOD

    # The flood's last pages flushed: a page sent after it, three times a round (more hits
    # than any flood page), is listed once a flush after the flood has taken it.
    last = "https://school.example/after-the-flood"
    with edge.client() as customer, edge.admin() as admin:

        def last_listed() -> bool:
            for _ in range(3):
                customer.get("/flood/", headers={"Referer": last})
            listed = admin.get("/api/tenants/flood/referrers").json()["referrers"]
            return bool(listed) and listed[0]["referrer"] == last

        eventually(last_listed, WAIT)
        listed = admin.get("/api/tenants/flood/referrers").json()["referrers"]
        metrics = admin.get("/metrics").text
    # Between two flushes the process held at most its bound per tenant; the rest was dropped.
    [uncounted] = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("edge_referrers_uncounted_total ")
    ]
    pages = int(edge.redis.cli("ZCARD", f"{edge.prefix}referrers:flood"))
    seen = int(edge.redis.cli("HLEN", f"{edge.prefix}referrers-seen:flood"))
    print(
        f"flood: {FLOOD} requests in {took:.1f} s; peak RSS grew {grown / 2**20:.1f} MiB; "
        f"referrers:flood {pages} pages, referrers-seen:flood {seen} fields; "
        f"{uncounted:.0f} referrers not counted"
    )
    assert grown < RSS_BOUND, f"edge grew by {grown / 2**20:.1f} MiB"
    assert uncounted > 0
    assert pages == REFERRERS_BOUND  # filled, never past the bound
    assert seen <= REFERRERS_BOUND
    assert edge.redis_keys("referrers*flood") == [
        f"{edge.prefix}referrers-seen:flood",
        f"{edge.prefix}referrers:flood",
    ]
    assert len(listed) <= REFERRERS_BOUND // 2  # the API's 100 most frequent
    assert all("?" not in entry["referrer"] for entry in listed)
