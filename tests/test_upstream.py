"""The forwarding leg's own HTTP/1.1 client (edge.forwarding.upstream), against a scripted portal on
a real socket: keep-alive reuse, the pool's limit, and answers a portal may give that a plain
client never sees (interim 1xx, a body that runs until close, HEAD, unsolicited bytes)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httptools
import httpx
import pytest

from edge.config import UpstreamSettings
from edge.forwarding.upstream import Connection, Origin, UpstreamPool
from tests.support.proxy import ProxyApp, serve_proxy
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.servers import Answer, ScriptedPortal
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for
from tests.support.stack import run_edge
from tests.support.waiting import eventually

WAIT = 10
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@contextmanager
def proxied(
    answer: Answer, delay: float = 0.0, **upstream: object
) -> Iterator[tuple[ScriptedPortal, str]]:
    with (
        ScriptedPortal(answer, delay) as portal,
        serve_proxy(ProxyApp(portal.url, **upstream)) as server,
    ):
        yield portal, server.url


def test_a_kept_alive_connection_carries_the_next_request() -> None:
    with proxied(lambda _: OK) as (portal, url):
        for _ in range(3):
            assert httpx.get(url + "/acme-gym/", timeout=WAIT).text == "ok"
    assert portal.connections == 1 and len(portal.requests) == 3


def test_an_idle_connection_is_closed_after_keepalive_timeout() -> None:
    with proxied(lambda _: OK, keepalive_timeout=0.3) as (portal, url):
        assert httpx.get(url + "/acme-gym/", timeout=WAIT).text == "ok"
        assert portal.open == 1  # kept for the next request
        eventually(lambda: portal.open == 0)
        assert httpx.get(url + "/acme-gym/", timeout=WAIT).text == "ok"
    assert portal.connections == 2


def test_interim_answers_are_skipped_for_the_final_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
    with proxied(lambda _: early + OK) as (_, url):
        response = httpx.get(url + "/acme-gym/", timeout=WAIT)
    assert (response.status_code, response.text) == (200, "ok")
    assert "link" not in response.headers


def test_a_body_that_runs_until_the_portal_closes_arrives_whole() -> None:
    body = b"x" * 300_000
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    with proxied(lambda _: until_close) as (portal, url):
        first = httpx.get(url + "/acme-gym/", timeout=WAIT)
        second = httpx.get(url + "/acme-gym/", timeout=WAIT)
    assert first.content == body and second.content == body
    assert portal.connections == 2  # such a connection cannot carry another request


def test_a_head_answer_ends_with_its_headers() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/html\r\n\r\n"
    with proxied(lambda _: head) as (_, url):
        response = httpx.head(url + "/acme-gym/", timeout=WAIT)
        again = httpx.head(url + "/acme-gym/", timeout=WAIT)
    assert response.status_code == 200 and again.status_code == 200
    assert response.headers["content-length"] == "1000"
    assert response.content == b""


def test_bytes_after_an_answer_end_that_connection_not_the_next_request() -> None:
    with proxied(lambda _: OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra") as (
        portal,
        url,
    ):
        first = httpx.get(url + "/acme-gym/", timeout=WAIT)
        time.sleep(0.2)  # the stray answer arrives
        second = httpx.get(url + "/acme-gym/", timeout=WAIT)
    assert first.text == "ok" and second.text == "ok"
    assert portal.connections == 2


def test_switching_protocols_on_a_plain_request_is_a_502() -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    with proxied(lambda _: upgrade) as (_, url):
        assert httpx.get(url + "/acme-gym/", timeout=WAIT).status_code == 502


def test_a_full_pool_makes_requests_wait_for_a_connection() -> None:
    with (
        proxied(lambda _: OK, delay=0.2, pool_size=1) as (portal, url),
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        answers = list(pool.map(lambda _: httpx.get(url + "/acme-gym/", timeout=WAIT), range(4)))
    assert [answer.text for answer in answers] == ["ok"] * 4
    assert portal.connections == 1


def test_waiting_for_a_place_in_the_pool_is_bounded_by_connect_timeout() -> None:
    with (
        proxied(lambda _: OK, delay=2, pool_size=1, connect_timeout=0.3) as (_, url),
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        slow = pool.submit(httpx.get, url + "/acme-gym/", timeout=WAIT)
        time.sleep(0.1)
        waiting = httpx.get(url + "/acme-gym/", timeout=WAIT)
        assert slow.result().text == "ok"
    assert waiting.status_code == 504


@pytest.mark.parametrize("size", [0, 5, 200_000])
def test_request_bodies_go_out_with_their_length(size: int) -> None:
    seen: list[bytes] = []

    def answer(head: bytes) -> bytes:
        seen.append(head)
        return OK

    with proxied(answer) as (_, url):
        response = httpx.post(url + "/acme-gym/", content=b"y" * size, timeout=WAIT)
    assert response.text == "ok"
    assert f"content-length: {size}".encode() in seen[0].lower()


def test_a_portal_url_never_puts_userinfo_in_host() -> None:
    """Config refuses such a URL; the Host edge writes would not carry it either."""
    origin = Origin.of("http://edge:s3cret@portal.internal:8000/base/")
    assert (origin.host, origin.port, origin.path) == ("portal.internal", 8000, "/base")
    assert origin.host_header == b"portal.internal:8000"


def test_a_request_at_one_portals_cap_leaves_the_others_idle_connections(
    redis_server: RedisServer,
) -> None:
    """pool_size 4: each portal holds 2. While legacy's 2 are busy and 4 more requests wait
    for them, the new portal's 2 idle connections stay open and carry its next requests."""
    prefix = prefix_with_modes(redis_server, {"dance": "active"})
    with (
        ScriptedPortal(lambda _: OK, delay=0.3) as slow,
        ScriptedPortal(lambda _: OK, delay=0.1) as fast,  # two at once take two connections
        concurrent.futures.ThreadPoolExecutor(6) as clients,
    ):
        raw = settings_for(
            slow.url,
            fast.url,
            redis_server.url,
            prefix,
            upstream={"pool_size": 4, "connect_timeout": 5.0, "keepalive_timeout": 30.0},
        )
        with run_edge(raw) as (_, public_url, _):

            def get(host: str, path: str) -> int:
                return httpx.get(
                    public_url + path, headers={"Host": host}, timeout=WAIT
                ).status_code

            assert list(clients.map(lambda _: get(NEW_HOST, "/dance/"), range(2))) == [200] * 2
            eventually(lambda: fast.open == 2)  # both kept for the next requests
            legacy = [clients.submit(get, LEGACY_HOST, "/acme/") for _ in range(6)]
            eventually(lambda: slow.open == 2)
            time.sleep(0.1)  # the other 4 are waiting for legacy's places
            assert fast.open == 2
            assert [get(NEW_HOST, "/dance/") for _ in range(4)] == [200] * 4
            assert [answer.result() for answer in legacy] == [200] * 6
    assert fast.connections == 2 and slow.connections == 2


class RecordingParser(httptools.HttpResponseParser):
    """httptools' parser, remembering each piece it is fed."""

    def __init__(self, protocol: object) -> None:
        super().__init__(protocol)
        self.fed: list[bytes] = []

    def feed_data(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        self.fed.append(bytes(data))
        super().feed_data(data)


async def test_a_header_value_in_thousands_of_reads_reaches_the_parser_whole() -> None:
    """httptools builds a value that comes in parts by +=: n parts cost n² bytes copied. After
    a head's first read the connection holds each line until its end is in: a value reaches
    the parser in two parts at most."""
    pool = UpstreamPool(UpstreamSettings(max_header_bytes=1_048_576))
    ours, theirs = socket.socketpair()
    connection = Connection(pool, Origin.of("http://portal.test"))
    await asyncio.get_running_loop().create_connection(lambda: connection, sock=ours)
    parser = connection._parser = RecordingParser(connection)
    try:
        connection.send_head(b"GET / HTTP/1.1\r\nHost: portal.test\r\n\r\n", False, False)
        value = b"v" * 1_000_000
        answer = b"HTTP/1.1 200 OK\r\nX-Big: " + value + b"\r\nContent-Length: 2\r\n\r\nok"
        reads = [answer[at : at + 256] for at in range(0, len(answer), 256)]
        for data in reads:  # as the event loop hands over what each read returned
            connection.data_received(data)
        await connection.head()
        assert (b"X-Big", value) in connection.headers
        assert await connection.read() == b"ok"
        assert len(reads) > 3900
        # The first read as it came, the rest of the head's lines, the body.
        assert [len(piece) for piece in parser.fed] == [256, len(answer) - 256 - 2, 2]
    finally:
        connection.close()
        theirs.close()
        await pool.close()
