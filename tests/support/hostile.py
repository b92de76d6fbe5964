"""edge in front of two raw-socket portals that misbehave on purpose, one per front, each
allowed one pooled connection, and the customers who ask through it (tests.test_hostile_portal
tells the story). Every customer names itself in ``X-Customer``; an answer the portal means for
a customer names that customer in its body."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.process import EdgeProcess
from tests.support.redis import RedisServer
from tests.support.servers import AsyncPortal
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for
from tests.support.waiting import WAIT

READ_TIMEOUT = 1.0
HEAD_LIMIT = 8192  # [upstream] max_header_bytes
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


@contextmanager
def hostile_edge(redis: RedisServer, prefix: str, directory: Path) -> Iterator[Edge]:
    """`edge serve` (a process of its own) in front of a fresh pair of portals."""
    with Portal() as legacy, Portal() as new:
        raw = edge_config(legacy, new, redis, prefix)
        with EdgeProcess(raw, directory) as process:
            yield Edge(process, legacy, new)
