"""Portals that break: the router (`edge serve`, a process of its own) in front of a raw
asyncio portal that resets, stalls, drips, cuts bodies short and speaks broken HTTP.

tests/test_forwarding.py covers the forwarding leg on a well-behaved uvicorn portal (closed
port, slow answer, a portal dying mid-body, clients leaving); here the faults are the ones only
a raw socket can make, and they come in the thousands.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import EdgeProcess
from tests.support.redis import RedisServer, unique_prefix
from tests.support.servers import AsyncPortal
from tests.support.settings import LEGACY_HOST, settings_for
from tests.support.waiting import eventually

READ_TIMEOUT = 0.5
POOL = 4  # connections to the portal: one leaked connection would show
HEAD_1000 = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"

Fault = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class FaultyPortal(AsyncPortal):
    """Answers each request the way its last path segment names; counts its connections.

    A fault returns whether the connection may carry another request.
    """

    def __init__(self) -> None:
        super().__init__()
        self.open = 0  # connections open right now
        self.accepted = 0
        self.stalled = 0  # requests being stalled right now
        self.faults: dict[bytes, Fault] = {
            b"ok": self.ok,
            b"reset": self.reset,
            b"reset-mid-body": self.reset_mid_body,
            b"short": self.short,
            b"short-chunked": self.short_chunked,
            b"invalid": self.invalid,
            b"garbage": self.garbage,
            b"stall": self.stall,
            b"drip": self.drip,
            b"drip-head": self.drip_head,
            b"drip-head-forever": self.drip_head_forever,
        }

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                fault = self.faults[target.partition(b"?")[0].rsplit(b"/", 1)[1]]
                if not await fault(reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.open -= 1

    async def ok(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async def reset(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        _reset(writer)
        return False

    async def reset_mid_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(HEAD_1000 + b"r" * 100)
        await writer.drain()
        await asyncio.sleep(0.01)
        _reset(writer)
        return False

    async def short(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(HEAD_1000 + b"s" * 100)  # and a clean close, 900 bytes short
        return False

    async def short_chunked(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"c" * 100)
        writer.write(b"\r\n")  # and no last chunk
        return False

    async def invalid(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 2x0 Weird\r\nContent-Length: 0\r\n\r\n")
        return False

    async def garbage(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"\x00\x01\x02 this is not HTTP\r\n\r\n")
        return False

    async def stall(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        self.stalled += 1
        try:
            await reader.read()  # until the router hangs up
        finally:
            self.stalled -= 1
        return False

    async def drip(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """A whole answer, one byte at a time: each gap within the read timeout, the whole
        body well past it."""
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
        for byte in b"drip-drop-ok":
            await asyncio.sleep(READ_TIMEOUT / 5)
            writer.write(bytes([byte]))
        return True

    async def drip_head(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """A head in parts, the whole of it well within the read timeout."""
        for line in (b"HTTP/1.1 200 OK\r\n", b"Content-Length: 4\r\n", b"X-Slow: yes\r\n"):
            await asyncio.sleep(READ_TIMEOUT / 10)
            writer.write(line)
        writer.write(b"\r\nhead")
        return True

    async def drip_head_forever(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """A head that never ends: a byte each tenth of the read timeout, each in time."""
        writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        try:
            while True:
                await asyncio.sleep(READ_TIMEOUT / 10)
                writer.write(b"z")
                await writer.drain()
        except ConnectionError:
            return False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset rather than a clean FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyPortal]:
    with FaultyPortal() as portal:
        yield portal


def edge_config(portal: FaultyPortal, redis: RedisServer, read_timeout: float) -> dict[str, Any]:
    return settings_for(
        portal.url,
        portal.url,
        redis.url,
        unique_prefix(),
        server={"access_log": False},
        upstream={
            "connect_timeout": 10.0,
            "read_timeout": read_timeout,
            "pool_size": POOL,
            "keepalive_timeout": 0.5,
        },
    )


@pytest.fixture(scope="module")
def edge(
    faulty: FaultyPortal, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeProcess]:
    raw = edge_config(faulty, redis_server, READ_TIMEOUT)
    with EdgeProcess(raw, tmp_path_factory.mktemp("faults")) as process:
        yield process


def get(edge: EdgeProcess, fault: str) -> httpx.Response:
    return httpx.get(f"{edge.url}/acme/{fault}", headers={"Host": LEGACY_HOST}, timeout=10)


@pytest.mark.parametrize("fault", ["reset", "invalid", "garbage"])
def test_a_portal_that_breaks_before_answering_is_a_502(edge: EdgeProcess, fault: str) -> None:
    response = get(edge, fault)
    assert response.status_code == 502
    assert response.headers["x-request-id"]


def test_a_head_that_drips_past_the_read_timeout_is_a_504(edge: EdgeProcess) -> None:
    """Every byte comes in time, but the whole head is due within read_timeout."""
    assert get(edge, "drip-head-forever").status_code == 504


def test_a_portal_that_never_answers_is_a_504_and_is_hung_up_on(
    edge: EdgeProcess, faulty: FaultyPortal
) -> None:
    assert get(edge, "stall").status_code == 504
    eventually(lambda: faulty.stalled == 0)


@pytest.mark.parametrize("fault", ["reset-mid-body", "short", "short-chunked"])
def test_a_body_cut_short_never_looks_complete(edge: EdgeProcess, fault: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        get(edge, fault)


def test_a_cut_body_costs_one_log_line_and_no_traceback(edge: EdgeProcess) -> None:
    for _ in range(3):
        with pytest.raises(httpx.RemoteProtocolError):
            get(edge, "short?log")
    output = edge.output()
    assert "Traceback" not in output
    assert "Exception in ASGI application" not in output
    lines = [line for line in output.splitlines() if "failed mid-response" in line]
    assert len(lines) >= 3
    assert all("after 100 bytes" in line for line in lines)


@pytest.mark.parametrize(("fault", "body"), [("drip", b"drip-drop-ok"), ("drip-head", b"head")])
def test_a_slow_but_steady_portal_is_waited_for(edge: EdgeProcess, fault: str, body: bytes) -> None:
    response = get(edge, fault)
    assert response.status_code == 200
    assert response.content == body


def test_a_client_leaving_hangs_up_on_the_portal(edge: EdgeProcess, faulty: FaultyPortal) -> None:
    stalled = faulty.stalled
    with socket.create_connection(("127.0.0.1", edge.port), 10) as sock:
        sock.sendall(b"GET /acme/stall HTTP/1.1\r\nHost: " + LEGACY_HOST.encode() + b"\r\n\r\n")
        eventually(lambda: faulty.stalled > stalled)
    eventually(lambda: faulty.stalled == stalled)


# What each fault looks like to the client: a status, or "cut": a response that stops short.
EXPECTED = {
    "ok": 200,
    "reset": 502,
    "invalid": 502,
    "garbage": 502,
    "reset-mid-body": "cut",
    "short": "cut",
    "short-chunked": "cut",
}


async def _fetch(port: int, fault: str) -> int | str:
    """One request on a connection of its own; its status, or "cut" if the response stopped
    short of the length it announced."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"GET /acme/{fault} HTTP/1.1\r\nHost: {LEGACY_HOST}\r\nConnection: close\r\n"
        writer.write(head.encode() + b"\r\n")
        received = await reader.read()
    except ConnectionResetError:
        return "cut"
    finally:
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    if not head:
        return "cut"
    if b"transfer-encoding: chunked" in head.lower():
        complete = body.endswith(b"0\r\n\r\n")
    else:
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        complete = len(body) == length
    return int(head.split(b" ", 2)[1]) if complete else "cut"


async def test_ten_thousand_faults_leak_no_connection(
    faulty: FaultyPortal, redis_server: RedisServer, tmp_path: Path
) -> None:
    requests = [random.choice(list(EXPECTED)) for _ in range(10_000)]
    pending = iter(requests)
    seen: Counter[tuple[str, int | str]] = Counter()
    # Generous timeouts: on a loaded machine a request may wait, but never turns into another.
    with EdgeProcess(edge_config(faulty, redis_server, read_timeout=10.0), tmp_path) as edge:

        async def worker() -> None:
            for fault in pending:
                seen[fault, await _fetch(edge.port, fault)] += 1

        accepted = faulty.accepted
        await asyncio.gather(*(worker() for _ in range(32)))

        assert seen == Counter((fault, EXPECTED[fault]) for fault in requests)
        assert faulty.accepted - accepted >= len(requests) - requests.count("ok")
        # Every faulty connection was closed, and the healthy ones idle out of the pool.
        await asyncio.to_thread(eventually, lambda: faulty.open == 0, 10)
        # The pool has all its places: more requests at once than it holds all get through.
        async with httpx.AsyncClient(base_url=edge.url, headers={"Host": LEGACY_HOST}) as client:
            answers = await asyncio.gather(*(client.get("/acme/ok") for _ in range(4 * POOL)))
        assert [answer.status_code for answer in answers] == [200] * 4 * POOL


def test_the_fault_portal_really_resets(faulty: FaultyPortal) -> None:
    """The reset fault is a TCP reset, not a clean close (else the tests above prove less)."""
    with socket.create_connection(("127.0.0.1", int(faulty.url.rsplit(":", 1)[1])), 10) as sock:
        sock.sendall(b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
