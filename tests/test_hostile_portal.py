"""A buggy or hostile portal cannot mix customers or take edge down.

`edge serve` (a process of its own, so its memory can be measured) in front of two raw-socket
portals, one per front, each allowed one pooled connection: a connection edge wrongly kept
would carry the very next request. Every customer names itself in ``X-Customer``; an answer
the portal means for a customer names that customer in its body. After each misstep of the
portal a second customer asks on the same front and must get its own answer, and the portal
must never have read one customer's bytes as part of another's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.process import EdgeProcess
from tests.stack import LEGACY_HOST, NEW_HOST, settings_for
from tests.support import AsyncPortal, RedisServer, eventually, unique_prefix

READ_TIMEOUT = 1.0
HEAD_LIMIT = 8192  # [upstream] max_header_bytes
WAIT = 10.0
LEGACY, NEW = "/acme", "/dance"  # a legacy tenant on the legacy front, an active one on the new


# --- the portal -----------------------------------------------------------------------------


@dataclass
class Request:
    """What the portal parsed of one request on one of its connections."""

    connection: int
    target: str
    headers: dict[str, list[str]]
    body: bytes = b""

    @property
    def customers(self) -> list[str]:
        return self.headers.get("x-customer", [])

    @property
    def query(self) -> dict[str, str]:
        query = parse_qs(urlsplit(self.target).query, keep_blank_values=True)
        return {name: values[0] for name, values in query.items()}


class Wire:
    """A connection's bytes as the portal reads them: buffered, so that an answer may go out
    before the request's body is read, and the body be read after."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffer = bytearray()

    async def fill(self, size: int) -> None:
        while len(self.buffer) < size:
            data = await self.reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(bytes(self.buffer), size)
            self.buffer += data

    async def until(self, mark: bytes) -> bytes:
        while (at := self.buffer.find(mark)) < 0:
            await self.fill(len(self.buffer) + 1)
        data = bytes(self.buffer[: at + len(mark)])
        del self.buffer[: at + len(mark)]
        return data

    async def take(self, size: int) -> bytes:
        await self.fill(size)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def body(self, headers: dict[str, list[str]]) -> bytes:
        if headers.get("transfer-encoding") == ["chunked"]:
            body = b""
            while size := int((await self.until(b"\r\n")).split(b";")[0], 16):
                body += await self.take(size)
                await self.take(2)
            while await self.until(b"\r\n") != b"\r\n":  # trailer fields, if any
                pass
            return body
        return await self.take(int(headers.get("content-length", ["0"])[0]))


Behaviour = Callable[[Wire, asyncio.StreamWriter, Request], Awaitable[bool]]


def answer(status: int, customer: str, extra: bytes = b"") -> bytes:
    body = f"customer={customer}".encode()
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%b\r\n%b" % (status, len(body), extra, body)


class Portal(AsyncPortal):
    """A raw HTTP/1.1 portal on loopback: it parses every request as a correct server does,
    records it, and answers the way the target's last segment names (a method below)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []
        self.accepted = 0
        self.open = 0
        self.offered = 0  # bytes of endless answers written before edge hung up
        self.strays = 0  # unsolicited answers written on idle connections
        self.misread = 0  # bytes that were not the request or chunk a correct server expected

    def seen(self, customer: str) -> list[Request]:
        return [request for request in self.requests if customer in request.customers]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        number = self.accepted
        wire = Wire(reader)
        try:
            while True:
                head = (await wire.until(b"\r\n\r\n")).decode("latin-1")
                line, *fields = head.split("\r\n")[:-2]
                headers: dict[str, list[str]] = {}
                for name, _, value in (f.partition(":") for f in fields):
                    headers.setdefault(name.strip().lower(), []).append(value.strip())
                request = Request(number, line.split(" ")[1], headers)
                self.requests.append(request)
                behaviour: Behaviour = getattr(self, urlsplit(request.target).path.split("/")[-1])
                if not await behaviour(wire, writer, request):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (ValueError, IndexError, AttributeError):  # another request's bytes, misread
            self.misread += 1
        finally:
            writer.close()
            self.open -= 1

    # -- behaviours: each returns whether the connection may carry another request --------------

    async def echo(self, wire: Wire, writer: asyncio.StreamWriter, request: Request) -> bool:
        request.body = await wire.body(request.headers)
        writer.write(answer(200, request.customers[0]))
        return True

    async def early(self, wire: Wire, writer: asyncio.StreamWriter, request: Request) -> bool:
        """A 413 once ``after`` bytes of the body are in, then the rest of the body read and
        thrown away, as a correct server does before the next request."""
        await wire.fill(int(request.query["after"]))
        writer.write(answer(413, request.customers[0]))
        await writer.drain()
        request.body = await wire.body(request.headers)
        return True

    async def hang(self, wire: Wire, writer: asyncio.StreamWriter, request: Request) -> bool:
        await wire.fill(len(wire.buffer) + 1)  # until edge hangs up
        return False

    async def stray(self, wire: Wire, writer: asyncio.StreamWriter, request: Request) -> bool:
        """A whole answer, then another one nobody asked for while the connection is idle."""
        writer.write(answer(200, request.customers[0]))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(answer(200, "nobody-asked"))
        self.strays += 1
        return True

    async def endless(self, wire: Wire, writer: asyncio.StreamWriter, request: Request) -> bool:
        """A head that never ends, as ``kind`` says, written until edge hangs up."""
        kind, piece = request.query["kind"], int(request.query.get("piece", 1024))
        start, more = {
            "fields": (b"HTTP/1.1 200 OK\r\n", lambda n: b"X-Flood-%d: %s\r\n" % (n, b"f" * 64)),
            "value": (b"HTTP/1.1 200 OK\r\nX-Big: ", lambda n: b"v" * piece),
            "interim": (b"", lambda n: b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"),
        }[kind]
        writer.write(start)
        for n in itertools.count():
            data = more(n)
            writer.write(data)
            self.offered += len(data)
            await writer.drain()
            if "pause" in request.query:
                await asyncio.sleep(float(request.query["pause"]))
        return False  # pragma: no cover (the loop ends with edge's hang-up)

    async def raw(self, wire: Wire, writer: asyncio.StreamWriter, request: Request) -> bool:
        """The bytes the test put in ``ANSWERS`` under ``name``, then a clean close."""
        writer.write(ANSWERS[request.query["name"]].replace(b"{customer}", _customer(request)))
        return False

    async def reset(self, wire: Wire, writer: asyncio.StreamWriter, request: Request) -> bool:
        """A body that runs until the connection closes, cut by a reset (or, with
        ``clean``, ended by a plain close)."""
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"r" * 5000)
        await writer.drain()
        await asyncio.sleep(0.1)
        if "clean" not in request.query:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        return False


def _customer(request: Request) -> bytes:
    return request.customers[0].encode()


ANSWERS: dict[str, bytes] = {}


def raw_answer(name: str, data: bytes) -> str:
    """The path of a request the portal answers with ``data`` ({customer} filled in)."""
    ANSWERS[name] = data
    return f"raw?name={name}"


# --- edge and its customers ----------------------------------------------------------------


@dataclass
class Edge:
    process: EdgeProcess
    legacy: Portal
    new: Portal
    numbers: Iterator[int] = field(default_factory=itertools.count)

    def customer(self, role: str) -> str:
        return f"{role}-{next(self.numbers)}"

    def victim_is_served(self, front: str = LEGACY) -> Request:
        """A second customer on the same front gets its own answer, and its request reached
        the portal whole and alone (which this returns)."""
        victim = self.customer("victim")
        reply = call(self.process.port, front, "echo", victim)
        assert (reply.status, reply.body) == (200, f"customer={victim}".encode())
        assert reply.complete
        portal = self.legacy if front == LEGACY else self.new
        assert portal.misread == 0
        assert [r.customers for r in portal.seen(victim)] == [[victim]]
        for request in portal.requests:
            assert len(request.customers) <= 1
            assert b"victim" not in request.body and b"X-Customer" not in request.body
        return portal.seen(victim)[0]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # framed as whole: the announced length, or the last chunk, arrived


def call(
    port: int,
    front: str,
    target: str,
    customer: str,
    body: bytes | None = None,
    chunked: bool = False,
    pieces: int = 1,
    pause: float = 0.0,
) -> Reply:
    """One request on a connection of its own, its body (if any) sent in ``pieces`` parts
    ``pause`` seconds apart; the reply as far as it came."""
    host = LEGACY_HOST if front == LEGACY else NEW_HOST
    lines = [f"{'GET' if body is None else 'POST'} {front}/{target} HTTP/1.1", f"Host: {host}"]
    lines += [f"X-Customer: {customer}", f"Cookie: session={customer}", "Connection: close"]
    if body is not None:
        lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
    parts: list[bytes] = []
    if body is not None:
        size = max(1, -(-len(body) // pieces))
        parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        if chunked:
            parts = [b"%x\r\n%b\r\n" % (len(p), p) for p in parts if p] + [b"0\r\n\r\n"]
    with socket.create_connection(("127.0.0.1", port), WAIT) as sock:
        data = "\r\n".join([*lines, "", ""]).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered early
            for part in parts:
                sock.sendall(data + part)
                data = b""
                time.sleep(pause)
            sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return parse(received)


def parse(received: bytes) -> Reply:
    head, _, rest = received.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return Reply(0, {}, b"", False)
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {n.strip().lower(): v.strip() for n, _, v in (f.partition(":") for f in fields)}
    if headers.get("transfer-encoding") == "chunked":
        body, complete = b"", False
        while b"\r\n" in rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                complete = rest.startswith(b"\r\n")
                break
            body, rest = body + rest[:size], rest[size + 2 :]
        return Reply(int(status_line.split()[1]), headers, body, complete)
    length = int(headers.get("content-length", len(rest)))
    return Reply(int(status_line.split()[1]), headers, rest[:length], len(rest) == length)


def edge_config(legacy: Portal, new: Portal, redis: RedisServer, prefix: str) -> dict[str, Any]:
    return settings_for(
        legacy.url,
        new.url,
        redis.url,
        prefix,
        server={"access_log": False},
        upstream={
            "connect_timeout": 2.0,
            "read_timeout": READ_TIMEOUT,
            "stream_idle_timeout": READ_TIMEOUT,
            # By default a portal holds half the pool: one connection each, so that one edge
            # wrongly kept would carry the very next request.
            "pool_size": 2,
            "keepalive_timeout": 3.0,
            "max_header_bytes": HEAD_LIMIT,
        },
    )


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    prefix = unique_prefix()
    redis_server.cli("SET", f"{prefix}mode:dance", "active")
    with Portal() as legacy, Portal() as new:
        raw = edge_config(legacy, new, redis_server, prefix)
        with EdgeProcess(raw, tmp_path_factory.mktemp("hostile")) as process:
            yield Edge(process, legacy, new)


# --- early answers ------------------------------------------------------------------------

SMALL = b"s" * 64
LARGE = b"L" * (1024 * 1024)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("after", range(len(SMALL) + 1))
def test_an_early_answer_to_a_small_upload_never_costs_the_next_customer(
    edge: Edge, after: int, chunked: bool
) -> None:
    uploader = edge.customer("uploader")
    reply = call(edge.process.port, LEGACY, f"early?after={after}", uploader, SMALL, chunked)
    assert (reply.status, reply.body) == (413, f"customer={uploader}".encode())
    edge.victim_is_served()


@pytest.mark.parametrize(
    ("pieces", "pause"), [(1, 0.0), (16, 0.02)], ids=["all-at-once", "in-16-parts"]
)
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("after", [0, 1, 65536, 300_000, len(LARGE) // 2, len(LARGE) - 1])
def test_an_early_answer_to_a_large_upload_never_costs_the_next_customer(
    edge: Edge, after: int, chunked: bool, pieces: int, pause: float
) -> None:
    uploader = edge.customer("uploader")
    target = f"early?after={after}"
    reply = call(edge.process.port, LEGACY, target, uploader, LARGE, chunked, pieces, pause)
    # edge may stop reading the upload once the answer is whole, and the client then see its
    # connection closed before the answer is read: but never another customer's answer.
    assert reply.status in (0, 413)
    if reply.status:
        assert reply.body == f"customer={uploader}".encode()
    edge.victim_is_served()


def test_an_answer_after_the_whole_upload_keeps_the_connection(edge: Edge) -> None:
    """The positive control: the checks above can see a connection carry on."""
    uploader = edge.customer("uploader")
    accepted = edge.legacy.accepted
    reply = call(edge.process.port, LEGACY, "echo", uploader, SMALL)
    assert reply.status == 200
    victim = edge.victim_is_served()
    assert edge.legacy.accepted - accepted <= 1  # at most one new connection, for both
    [upload] = edge.legacy.seen(uploader)
    assert upload.body == SMALL
    assert upload.connection == victim.connection


# --- answers on no request ------------------------------------------------------------------


def test_an_unsolicited_answer_on_an_idle_connection_reaches_no_one(edge: Edge) -> None:
    strays = edge.legacy.strays
    first = edge.customer("first")
    assert call(edge.process.port, LEGACY, "stray", first).body == f"customer={first}".encode()
    eventually(lambda: edge.legacy.strays > strays)  # it was written: the check can see it
    time.sleep(0.2)  # and it arrived at edge, on the idle connection
    edge.victim_is_served()


# --- heads that never end ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fields", "value", "interim"])
def test_a_head_over_the_limit_is_a_502_and_the_connection_is_closed(edge: Edge, kind: str) -> None:
    offered = edge.new.offered
    reply = call(edge.process.port, NEW, f"endless?kind={kind}", edge.customer("flooded"))
    assert reply.status == 502
    assert reply.headers["x-request-id"]
    # edge hung up within a little more than the limit (what the sockets' buffers held).
    assert edge.new.offered - offered < 16 * 1024 * 1024
    edge.victim_is_served(NEW)


@pytest.mark.parametrize("kind", ["fields", "value", "interim"])
def test_a_head_that_trickles_is_due_whole_within_the_read_timeout(edge: Edge, kind: str) -> None:
    target = f"endless?kind={kind}&pause=0.1&piece=16"  # ten reads a second, far from the limit
    reply = call(edge.process.port, NEW, target, edge.customer("drip"))
    assert reply.status == 504
    edge.victim_is_served(NEW)


def test_memory_stays_bounded_under_endless_heads(
    edge: Edge, redis_server: RedisServer, tmp_path: Path
) -> None:
    before = edge.process.peak_rss()
    for n in range(12):
        kind = ("fields", "value", "interim")[n % 3]
        assert call(edge.process.port, NEW, f"endless?kind={kind}", f"rss-{n}").status == 502
    grown = edge.process.peak_rss() - before
    assert grown < 16 * 1024 * 1024, f"edge grew by {grown / 2**20:.1f} MiB"
    edge.victim_is_served(NEW)


# --- answers that are not HTTP a proxy can pass on --------------------------------------------


@pytest.mark.parametrize("status", [b"000", b"099", b"600", b"999"])
def test_a_status_outside_100_to_599_is_a_502(edge: Edge, status: bytes) -> None:
    data = b"HTTP/1.1 %b Odd\r\nContent-Length: 2\r\n\r\nok" % status
    reply = call(edge.process.port, LEGACY, raw_answer(f"status-{status.decode()}", data), "odd")
    assert reply.status == 502
    edge.victim_is_served()


@pytest.mark.parametrize(("fields", "status"), [(100, 200), (101, 502)])
def test_a_head_with_more_fields_than_max_headers_is_a_502(
    edge: Edge, fields: int, status: int
) -> None:
    # Short fields, so the head stays far under max_header_bytes: the count alone decides.
    # 100 (the default max_headers, Content-Length included) is the control that passes.
    head = b"".join(b"X-F%d: v\r\n" % n for n in range(fields - 1))
    data = b"HTTP/1.1 200 OK\r\n%bContent-Length: 2\r\n\r\nok" % head
    assert len(data) < HEAD_LIMIT
    reply = call(edge.process.port, LEGACY, raw_answer(f"fields-{fields}", data), "fields")
    assert reply.status == status
    edge.victim_is_served()


BAD_FRAMINGS = {
    "length-and-chunked": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-lengths": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "list-length": b"Content-Length: 5, 5\r\n\r\nhello",
    "signed-length": b"Content-Length: +5\r\n\r\nhello",
    "space-before-colon": b"Content-Length : 5\r\n\r\nhello",
    "folded": b"X-A: a\r\n folded\r\nContent-Length: 5\r\n\r\nhello",
    "bare-lf": b"Content-Length: 5\n\nhello",
    "bad-chunk-size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-overrun": b"Transfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
    "nul-in-value": b"X-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("name", BAD_FRAMINGS)
def test_a_framing_a_proxy_could_read_two_ways_is_a_502(edge: Edge, name: str) -> None:
    data = b"HTTP/1.1 200 OK\r\n" + BAD_FRAMINGS[name]
    reply = call(edge.process.port, LEGACY, raw_answer(name, data), edge.customer("framing"))
    assert reply.status in (0, 502) or not reply.complete  # never a whole answer
    edge.victim_is_served()


def test_trailer_fields_never_join_the_head(edge: Edge) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-In-Head: yes\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer-Secret: t\r\n\r\n"
    )
    reply = call(edge.process.port, LEGACY, raw_answer("trailers", data), "trailers")
    assert (reply.status, reply.body, reply.complete) == (200, b"hello", True)
    assert reply.headers["x-in-head"] == "yes"  # the check can see a field of the head
    assert "x-trailer-secret" not in reply.headers
    edge.victim_is_served()


def test_a_portals_own_x_edge_headers_never_reach_the_client(edge: Edge) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nX-Edge-Mode: active\r\nx-edge-tenant: someone-else\r\n"
        b"X-EDGE-Anything: 1\r\nX-Edgeless: kept\r\nContent-Length: 2\r\n\r\nok"
    )
    reply = call(edge.process.port, LEGACY, raw_answer("own-headers", data), "own")
    assert reply.status == 200
    assert reply.headers["x-edgeless"] == "kept"
    assert not [name for name in reply.headers if name.startswith("x-edge-")]


# --- bodies cut short -------------------------------------------------------------------------


def test_a_body_to_the_close_cut_by_a_reset_is_cut_for_the_client(edge: Edge) -> None:
    reply = call(edge.process.port, LEGACY, "reset", edge.customer("reset"))
    assert reply.status == 200
    assert not reply.complete
    edge.victim_is_served()


def test_a_body_to_the_close_ended_cleanly_is_whole(edge: Edge) -> None:
    """The positive control: the check above can see a whole body."""
    reply = call(edge.process.port, LEGACY, "reset?clean", edge.customer("clean"))
    assert (reply.status, reply.body, reply.complete) == (200, b"r" * 5000, True)


# --- one portal hung, the other front served --------------------------------------------------


def test_a_hung_portal_holds_up_only_its_own_front(edge: Edge) -> None:
    hung: list[Reply] = []
    stuck = [
        threading.Thread(
            target=lambda n=n: hung.append(call(edge.process.port, NEW, "hang", f"hung-{n}")),
            daemon=True,
        )
        for n in range(4)
    ]
    for thread in stuck:
        thread.start()
    eventually(lambda: edge.new.open >= 1)  # its one place is held
    for _ in range(5):
        edge.victim_is_served(LEGACY)
    for thread in stuck:
        thread.join(WAIT)
    assert sorted(reply.status for reply in hung) == [504] * 4
