"""Clients slow on purpose, against `edge serve` on loopback, each with real sockets.

Heads must arrive whole within header_timeout, bodies may not stall for body_idle_timeout, a
body that stalls never holds a portal connection (nor, streamed, more than half the pool),
connections beyond max_connections get 503 before descriptors run out, and made-up tenants
leave no keys in Redis.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.process import EdgeProcess
from tests.support.raw import Reply, read_reply
from tests.support.redis import RedisServer, unique_prefix
from tests.support.servers import ScriptedPortal
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for
from tests.support.waiting import eventually

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BIG = 8 * 2**20  # more than the socket buffers and edge's own hold between portal and client
POOL = 4
PATIENCE = 10.0  # how long a test waits for edge to act: many times any deadline here
TENANT = "acme"


def answer(head: bytes) -> bytes:
    if head.startswith(b"GET /acme/big "):
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + bytes(BIG)
    return OK


@pytest.fixture(scope="module")
def portal() -> Iterator[ScriptedPortal]:
    # Patient: a connection it holds open was left open by edge.
    with ScriptedPortal(answer, patience=60.0) as running:
        yield running


def start_edge(
    portal: ScriptedPortal,
    redis_server: RedisServer,
    directory: Path,
    prefix: str = "edge:",
    descriptors: tuple[int, int] | None = None,
    new_portal: ScriptedPortal | None = None,
    **server: object,
) -> EdgeProcess:
    raw = settings_for(
        portal.url,
        (new_portal or portal).url,
        redis_server.url,
        prefix,
        server={
            "header_timeout": 1.0,
            "body_idle_timeout": 2.0,
            "keepalive_timeout": 2.0,
            "send_timeout": 1.0,
            **server,
        },
        upstream={
            "pool_size": 2 * POOL,  # POOL places for each portal
            "pool_size_per_host": POOL,
            "connect_timeout": 1.0,
            "read_timeout": 5.0,
            "keepalive_timeout": 0.5,  # idle portal connections go soon: portal.open counts
        },
    )
    return EdgeProcess(raw, directory, descriptors)


@pytest.fixture(scope="module")
def edge(
    portal: ScriptedPortal, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeProcess]:
    with start_edge(portal, redis_server, tmp_path_factory.mktemp("slow")) as process:
        yield process


def connect(edge: EdgeProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", edge.port), timeout=PATIENCE)


def until_closed(sock: socket.socket, within: float = PATIENCE) -> Reply:
    """What edge writes until it closes the connection (closed=False: it was still open)."""
    return read_reply(sock, within)


def get(edge: EdgeProcess, tenant: str = TENANT) -> int:
    response = httpx.get(f"{edge.url}/{tenant}/", headers={"Host": LEGACY_HOST}, timeout=PATIENCE)
    return response.status_code


def upload_head(length: int, path: str = "/acme/upload", host: str = LEGACY_HOST) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (
        path.encode(),
        host.encode(),
        length,
    )


def posts_seen(portal: ScriptedPortal) -> int:
    return sum(head.startswith(b"POST ") for head in portal.requests)


def closed_for(edge: EdgeProcess, reason: str) -> float:
    """edge_client_connections_closed_total for ``reason``, from the admin listener."""
    metrics = httpx.get(f"http://127.0.0.1:{edge.admin_port}/metrics", timeout=PATIENCE).text
    sample = f'edge_client_connections_closed_total{{reason="{reason}"}} '
    [line] = [line for line in metrics.splitlines() if line.startswith(sample)]
    return float(line.removeprefix(sample))


# --- request heads ----------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_without_a_word(edge: EdgeProcess) -> None:
    with connect(edge) as idle, connect(edge) as prompt:
        prompt.sendall(b"GET /acme/ HTTP/1.1\r\nHost: %s\r\n\r\n" % LEGACY_HOST.encode())
        assert until_closed(prompt, within=1.5).status == 200  # in time: served, kept open
        assert until_closed(idle) == Reply(b"", closed=True)


def test_half_a_head_gets_408_and_the_connection_is_closed(
    edge: EdgeProcess, portal: ScriptedPortal
) -> None:
    before, counted = len(portal.requests), closed_for(edge, "header_timeout")
    with connect(edge) as sock:
        sock.sendall(b"GET /acme/half HTTP/1.1\r\nHost: %s\r\n" % LEGACY_HOST.encode())
        reply = until_closed(sock)
    assert reply.closed and reply.statuses == [408]
    assert len(portal.requests) == before
    assert closed_for(edge, "header_timeout") == counted + 1


def test_a_head_sent_a_byte_at_a_time_is_cut_off_before_it_ends(edge: EdgeProcess) -> None:
    head = b"GET /acme/drip HTTP/1.1\r\nHost: %s\r\nX-Drip: %s\r\n\r\n" % (
        LEGACY_HOST.encode(),
        b"d" * 40,
    )
    sent = 0
    with connect(edge) as sock:
        sock.settimeout(0.25)  # a byte every quarter second: the head would take 20 s
        while sent < len(head):
            sock.sendall(head[sent : sent + 1])
            sent += 1
            try:
                sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue
            break  # edge said something, or closed
        reply = until_closed(sock)
    assert sent < len(head)
    assert reply.closed and reply.statuses == [408]


def test_a_slow_head_after_a_response_is_408_and_an_idle_connection_is_closed(
    edge: EdgeProcess,
) -> None:
    request = b"GET /acme/ HTTP/1.1\r\nHost: %s\r\n\r\n" % LEGACY_HOST.encode()
    with connect(edge) as slow, connect(edge) as idle:
        for sock in (slow, idle):
            sock.sendall(request)
            assert until_closed(sock, within=0.5).status == 200
        slow.sendall(request[:20])  # the next head starts, and stalls
        reply = until_closed(slow)
        assert reply.closed and reply.statuses == [408]
        # keepalive_timeout (here 2 s) closes the idle one, with nothing to say.
        assert until_closed(idle) == Reply(b"", closed=True)


def test_a_head_pipelined_behind_a_slow_answer_waits_for_it_then_gets_408(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The portal takes longer than header_timeout to answer; the next head, begun meanwhile
    and never finished, is not cut off before the answer is out: 200, then 408."""
    with (
        ScriptedPortal(answer, delay=2.5) as slow_portal,
        start_edge(slow_portal, redis_server, tmp_path) as edge,
        connect(edge) as sock,
    ):
        sock.sendall(
            b"GET /acme/ HTTP/1.1\r\nHost: %s\r\n\r\nGET /acme/next HTTP/1.1\r\nHo"
            % LEGACY_HOST.encode()
        )
        reply = until_closed(sock)
    assert reply.closed and reply.statuses == [200, 408]


# --- request bodies and the portal pool -------------------------------------------------------


def test_stalled_uploads_hold_no_portal_connection_and_get_408(
    edge: EdgeProcess, portal: ScriptedPortal
) -> None:
    """Twice the pool's size in clients announce a megabyte and send two bytes: the portal
    never hears of them, everyone else is served, and each staller gets 408."""
    posts, counted = posts_seen(portal), closed_for(edge, "body_idle_timeout")
    stallers = [connect(edge) for _ in range(2 * POOL)]
    try:
        for sock in stallers:
            sock.sendall(upload_head(1_000_000) + b"ab")
        assert [get(edge) for _ in range(2 * POOL)] == [200] * (2 * POOL)
        replies = [until_closed(sock) for sock in stallers]
    finally:
        for sock in stallers:
            sock.close()
    assert all(reply.closed and reply.statuses == [408] for reply in replies)
    assert posts_seen(portal) == posts
    assert closed_for(edge, "body_idle_timeout") == counted + 2 * POOL


def test_streamed_uploads_hold_half_the_pool_at_most_and_stalled_ones_are_dropped(
    edge: EdgeProcess, portal: ScriptedPortal
) -> None:
    """Uploads longer than edge reads ahead hold a portal connection while the client sends;
    two (half the pool) may, the others get 503. The two that stall get 408 and their portal
    connections are closed, never reused; ordinary requests go on meanwhile."""
    posts = posts_seen(portal)
    streamers = [connect(edge) for _ in range(POOL)]
    try:
        for sock in streamers:
            sock.sendall(upload_head(1_000_000) + b"u" * 100_000)
        eventually(lambda: posts_seen(portal) == posts + POOL // 2)  # the places are held
        assert portal.open >= POOL // 2
        assert [get(edge) for _ in range(2 * POOL)] == [200] * (2 * POOL)
        replies = [until_closed(sock) for sock in streamers]
    finally:
        for sock in streamers:
            sock.close()
    assert sorted(reply.status for reply in replies) == [408, 408, 503, 503]
    assert all(reply.closed for reply in replies)
    assert posts_seen(portal) == posts + POOL // 2
    # The stalled uploads' portal connections were closed, not put back in the pool (the
    # others' too, idle for the upstream keepalive_timeout).
    eventually(lambda: portal.open == 0)
    assert get(edge) == 200


class EarlyPortal(ScriptedPortal):
    """Answers a request at once, before its body: a head, 10 bytes of 1,000, then waits."""

    def _converse(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(self.patience)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            while conn.recv(65536):  # until edge hangs up
                pass


def test_the_access_log_says_408_for_a_stalled_body_and_499_for_a_client_that_left(
    portal: ScriptedPortal, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The status logged is the one the client got: edge's 408 for a body that stalled, read
    ahead or streamed; the portal's, if its answer had begun (then cut short); 499 only for a
    client that went away before an answer."""
    prefix = unique_prefix()
    redis_server.cli("SET", f"{prefix}mode:dance", "active")  # on the new front, to EarlyPortal
    with (
        EarlyPortal(answer) as early,
        start_edge(
            portal, redis_server, tmp_path, prefix, new_portal=early, access_log=True
        ) as edge,
    ):
        stalled = [
            (upload_head(1_000_000, "/acme/read-ahead"), b"ab"),
            (upload_head(1_000_000, "/acme/streamed"), b"u" * 100_000),
            (upload_head(1_000_000, "/dance/answered", NEW_HOST), b"u" * 100_000),
        ]
        replies = []
        for head, sent in stalled:
            with connect(edge) as sock:
                sock.sendall(head + sent)
                replies.append(until_closed(sock))
        with connect(edge) as sock:
            sock.sendall(upload_head(1_000_000, "/acme/left") + b"ab")
        # Closed at once, long before body_idle_timeout.

        def access() -> dict[str, dict[str, object]]:
            entries = [json.loads(line) for line in edge.output().splitlines() if line[:1] == "{"]
            return {e["path"]: e for e in entries if e["logger"] == "edge.access"}

        eventually(lambda: len(access()) == 4, within=PATIENCE)
        logged = {p: (e["status"], e["bytes"], e["reason"]) for p, e in access().items()}
    assert [reply.status for reply in replies] == [408, 408, 200]
    assert all(reply.closed for reply in replies)
    assert replies[2].data.endswith(b"\r\n\r\n" + b"x" * 10)  # cut short
    assert logged == {
        "/acme/read-ahead": (408, 0, "body_timeout"),
        "/acme/streamed": (408, 0, "body_timeout"),
        "/dance/answered": (200, 10, "body_timeout"),
        "/acme/left": (499, 0, "client_closed"),
    }


def test_an_upload_sent_in_time_goes_through_whole(
    edge: EdgeProcess, portal: ScriptedPortal
) -> None:
    """The positive control: small and streamed uploads that keep coming are forwarded."""
    for size in (10, 200_000):
        with connect(edge) as sock:
            sock.sendall(upload_head(size))
            for start in range(0, size, 50_000):
                sock.sendall(b"x" * min(50_000, size - start))
                time.sleep(0.5)  # slower than read-ahead, well inside body_idle_timeout
            reply = until_closed(sock, within=1.0)
        assert reply.status == 200, reply


# --- responses nobody reads -------------------------------------------------------------------


def test_clients_that_read_nothing_of_large_answers_are_cut_off_and_free_the_pool(
    edge: EdgeProcess, portal: ScriptedPortal
) -> None:
    """As many clients as the pool has places ask for 8 MiB and read none of it: each held a
    portal connection for as long as it liked; after send_timeout edge drops them."""

    def asked() -> int:
        return sum(head.startswith(b"GET /acme/big ") for head in portal.requests)

    counted, before = closed_for(edge, "send_timeout"), asked()
    readers = []
    for _ in range(POOL):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", edge.port))
        sock.sendall(b"GET /acme/big HTTP/1.1\r\nHost: %s\r\n\r\n" % LEGACY_HOST.encode())
        readers.append(sock)
    try:
        eventually(lambda: asked() == before + POOL)  # every place in the pool taken
        eventually(lambda: closed_for(edge, "send_timeout") == counted + POOL, within=PATIENCE)
        assert get(edge) == 200
    finally:
        for sock in readers:
            sock.close()
    eventually(lambda: portal.open == 0, within=PATIENCE)  # the portal connections let go


# --- connections and descriptors --------------------------------------------------------------


def test_beyond_max_connections_new_connections_get_503(
    portal: ScriptedPortal, redis_server: RedisServer, tmp_path: Path
) -> None:
    with start_edge(
        portal,
        redis_server,
        tmp_path,
        descriptors=(512, 4096),
        header_timeout=30.0,
        max_connections=20,
    ) as edge:
        # It takes what the hard limit allows, and says what it has and what it needs.
        assert edge.started()["file_descriptors"] == {
            "limit": 4096,
            "raised_from": 512,
            "needed": 368,
            "max_connections": 20,
        }
        assert edge.logged("file descriptors") == []  # no shortfall to warn of
        held = [connect(edge) for _ in range(20)]
        try:
            with connect(edge) as late:
                reply = until_closed(late)  # answered before it says a word
            assert reply.closed and reply.statuses == [503]
            assert reply.header(b"retry-after") == b"1"
            late_request = httpx.get(edge.url + "/acme/", headers={"Host": LEGACY_HOST})
            assert late_request.status_code == 503
            assert closed_for(edge, "max_connections") == 2
        finally:
            for sock in held[:5]:
                sock.close()
        try:
            eventually(lambda: get(edge) == 200)
        finally:
            for sock in held[5:]:
                sock.close()


def test_under_1024_descriptors_a_flood_of_slow_heads_gets_503_never_502(
    portal: ScriptedPortal, redis_server: RedisServer, tmp_path: Path
) -> None:
    """systemd's default limit: 1,100 connections sending half a head each used to leave no
    descriptor for the portal connection (502). edge takes as many connections as leave
    descriptors for the rest, says so at start, and answers the others 503."""
    with start_edge(
        portal,
        redis_server,
        tmp_path,
        descriptors=(1024, 1024),
        header_timeout=60.0,
        keepalive_timeout=60.0,
    ) as edge:
        [line] = edge.logged("file descriptors")
        assert line.startswith("file descriptors: 1024, too few for max_connections 10000")
        assert "each worker takes 348 connections" in line
        with httpx.Client(base_url=edge.url, headers={"Host": LEGACY_HOST}) as customer:
            assert customer.get("/acme/").status_code == 200  # a keep-alive connection, early
            flood = []
            try:
                for _ in range(1100):
                    sock = connect(edge)
                    with contextlib.suppress(OSError):
                        sock.sendall(b"GET /acme/ HTTP/1.1\r\nHost: ")
                    flood.append(sock)
                assert get(edge) == 503
                time.sleep(1.0)  # past the upstream keepalive_timeout: a new portal connection
                assert customer.get("/acme/").status_code == 200
                assert edge.open_descriptors() < 1024 - 128
            finally:
                for sock in flood:
                    sock.close()
            eventually(lambda: get(edge) == 200)
        assert "Too many open files" not in edge.output()


# --- traffic counts in Redis ------------------------------------------------------------------


def keys(redis_server: RedisServer, prefix: str) -> list[str]:
    found = redis_server.cli("--scan", "--pattern", f"{prefix}*")
    return sorted(found.split()) if found else []


def pipelined_gets(port: int, tenants: list[str]) -> list[int]:
    """One GET per tenant on the legacy front, pipelined on one connection; the statuses."""
    requests = b"".join(
        b"GET /%s/page HTTP/1.1\r\nHost: %s\r\n\r\n" % (tenant.encode(), LEGACY_HOST.encode())
        for tenant in tenants
    )
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as sock:
        writer = threading.Thread(target=sock.sendall, args=(requests,))
        writer.start()
        received = b""
        while received.count(b"HTTP/1.1 ") < len(tenants):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        writer.join()
    return [int(part[:3]) for part in received.split(b"HTTP/1.1 ")[1:]]


def test_twenty_thousand_made_up_tenants_leave_no_key_in_redis(
    portal: ScriptedPortal, redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    redis_server.cli("SET", f"{prefix}mode:{TENANT}", "legacy")  # a tenant ops have keyed
    with start_edge(portal, redis_server, tmp_path, prefix) as edge:
        made_up = [f"made-up-{n}" for n in range(20_000)]
        batches = [made_up[start : start + 2_000] for start in range(0, len(made_up), 2_000)]
        for batch in batches:
            assert pipelined_gets(edge.port, batch) == [200] * len(batch)
        assert get(edge, TENANT) == 200
        deep_links = f"{prefix}deeplinks:{TENANT}"
        eventually(lambda: deep_links in keys(redis_server, prefix))  # counting works
    assert keys(redis_server, prefix) == [deep_links, f"{prefix}mode:{TENANT}"]
