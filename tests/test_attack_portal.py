"""A portal's answers that edge could pass on wrongly: codings it drops, lengths written
oddly, edge's own names in disguise. Each case ends with a second customer served on the same
front (the portal and checks of tests.support.hostile)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hostile import (
    LEGACY,
    Edge,
    Portal,
    Reply,
    Request,
    Wire,
    call,
    edge_config,
    hostile_edge,
    raw_answer,
)
from tests.support.process import EdgeProcess
from tests.support.redis import RedisServer, unique_prefix
from tests.support.settings import LEGACY_HOST
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    with hostile_edge(redis_server, unique_prefix(), tmp_path_factory.mktemp("attack")) as running:
        yield running


def relay(edge: Edge, name: str, fields: bytes) -> Reply:
    """A 200 with ``fields`` (and what follows them) to one customer, then the next served."""
    data = b"HTTP/1.1 200 OK\r\n" + fields
    reply = call(edge.process.port, LEGACY, raw_answer(f"attack-{name}", data), name)
    edge.victim_is_served()
    return reply


# A coding edge would drop with the hop-by-hop header that names it: the client would get
# gzip bytes as the body itself. nginx refuses every Transfer-Encoding but "chunked" alone.
CODINGS = {
    "gzip": b"Transfer-Encoding: gzip\r\n\r\nhello",
    "gzip-then-chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "chunked-twice": b"Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two-fields": (
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", CODINGS)
def test_a_transfer_coding_other_than_chunked_is_a_502(edge: Edge, name: str) -> None:
    assert relay(edge, name, CODINGS[name]).status == 502


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED"])
def test_chunked_alone_in_any_case_is_passed_on(edge: Edge, value: bytes) -> None:
    """The positive control."""
    fields = b"Transfer-Encoding: " + value + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    reply = relay(edge, "chunked", fields)
    assert (reply.status, reply.body, reply.complete) == (200, b"hello", True)


@pytest.mark.parametrize("value", [b"005", b"0005", b"5"])
def test_a_length_reaches_the_client_as_a_plain_number(edge: Edge, value: bytes) -> None:
    fields = b"Content-Length: " + value + b"\r\n\r\nhello"
    reply = relay(edge, "length", fields)
    assert (reply.status, reply.body, reply.complete) == (200, b"hello", True)
    assert reply.headers["content-length"] == "5"


@pytest.mark.parametrize("name", [b"X_Edge_Mode", b"x-edge_tenant", b"X_EDGE-Anything"])
def test_edge_names_written_with_underscores_never_reach_the_client(
    edge: Edge, name: bytes
) -> None:
    fields = name + b": forged\r\nX_Other: kept\r\nContent-Length: 2\r\n\r\nok"
    reply = relay(edge, "underscore", fields)
    assert reply.status == 200
    assert reply.headers["x_other"] == "kept"  # the check can see an underscore name
    assert "forged" not in reply.headers.values()


# --- a body in tiny chunks, to clients that read nothing ----------------------------------


class TinyChunks(Portal):
    sent = 0  # bytes of body written, all connections together

    async def tiny(self, wire: Wire, writer: asyncio.StreamWriter, request: Request) -> bool:
        """A chunked body of two-byte chunks, written until edge stops reading."""
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"2\r\nab\r\n" * 4096
        for _ in range(200):  # 40 MB at most: far beyond every buffer on the way
            writer.write(piece)
            self.sent += 8192
            await writer.drain()
        return False


def test_a_body_in_tiny_chunks_is_buffered_within_its_bound(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """edge stops reading a portal once it holds 128 KiB of body its client has not taken;
    held as one object each, the two-byte chunks of one read cost 25 times their bytes
    (40 such clients: 53 to 77 MiB before, under 4 MiB after)."""
    clients = 40
    with TinyChunks() as legacy, Portal() as new:
        raw = edge_config(legacy, new, redis_server, unique_prefix())
        raw["upstream"] = {**raw["upstream"], "pool_size": 2 * clients}
        with EdgeProcess(raw, tmp_path) as process, contextlib.ExitStack() as stack:
            before = process.peak_rss()
            request = f"GET {LEGACY}/tiny HTTP/1.1\r\nHost: {LEGACY_HOST}\r\n\r\n".encode()
            for _ in range(clients):
                sock = stack.enter_context(socket.create_connection(("127.0.0.1", process.port)))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(request)  # and read nothing
            for _ in range(60):  # until edge has stopped reading every portal for a second
                settled = legacy.sent
                with contextlib.suppress(AssertionError):
                    eventually(lambda settled=settled: legacy.sent != settled, within=1.0)
                if legacy.sent == settled:
                    break
            grown = process.peak_rss() - before
    assert legacy.sent > clients * 128 * 1024  # the check can see edge buffer
    assert grown < clients * 512 * 1024, f"edge grew by {grown / 2**20:.1f} MiB"
