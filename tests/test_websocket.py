"""WebSockets through the router: real clients, real uvicorn, a real WebSocket portal."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.ports import bound_socket, free_port
from tests.support.redis import RedisServer, prefix_with_modes, unique_prefix
from tests.support.servers import ServerThread
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for
from tests.support.stack import run_edge
from tests.support.waiting import eventually

CHUNK = 64 * 1024
FLOOD = 2000  # messages of CHUNK bytes: 125 MiB, far more than every buffer on the way holds
# A handshake is a write for a setup tenant: these portals' sockets are allow-listed.
OPEN_TO_WEBSOCKETS = {"setup_allow": [{"method": "WEBSOCKET", "path": "/{tenant}/*"}]}


@dataclass
class Seen:
    """What the portal saw of one WebSocket."""

    headers: list[tuple[str, str]]
    subprotocols: list[str]
    received: list[str | bytes] = field(default_factory=list)
    closed: tuple[int, str] | None = None  # the code and reason the portal was closed with
    sent: int = 0

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class Portal:
    """A WebSocket portal; the last path segment says what it does, ?id= names the session."""

    def __init__(self) -> None:
        self.seen: dict[str, Seen] = {}
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        seen = Seen(
            [(k.decode(), v.decode("latin-1")) for k, v in scope["headers"]],
            list(scope["subprotocols"]),
        )
        self.seen[query["id"]] = seen
        action = getattr(self, scope["path"].rsplit("/", 1)[1])
        await action(receive, send, seen, scope["subprotocols"])

    async def echo(self, receive: Any, send: Any, seen: Seen, offered: list[str]) -> None:
        chosen = "v1.checkout" if "v1.checkout" in offered else None
        await send({"type": "websocket.accept", "subprotocol": chosen})
        await self.relay_back(receive, send, seen)

    async def relay_back(self, receive: Any, send: Any, seen: Seen) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                seen.closed = (message["code"], message.get("reason") or "")
                return
            data = message.get("text") if message.get("text") is not None else message["bytes"]
            seen.received.append(data)
            key = "text" if isinstance(data, str) else "bytes"
            await send({"type": "websocket.send", key: data})

    async def close(self, receive: Any, send: Any, seen: Seen, offered: list[str]) -> None:
        await send({"type": "websocket.accept"})
        seen.received.append((await receive())["text"])
        await send({"type": "websocket.close", "code": 4002, "reason": "done"})

    async def crash(self, receive: Any, send: Any, seen: Seen, offered: list[str]) -> None:
        await send({"type": "websocket.accept"})
        await receive()
        raise RuntimeError("the portal dies without a close frame (on purpose)")

    async def flood(self, receive: Any, send: Any, seen: Seen, offered: list[str]) -> None:
        await send({"type": "websocket.accept"})
        for _ in range(FLOOD):
            await send({"type": "websocket.send", "bytes": b"f" * CHUNK})
            seen.sent += 1
        await send({"type": "websocket.send", "text": "end"})
        await receive()

    async def sink(self, receive: Any, send: Any, seen: Seen, offered: list[str]) -> None:
        await send({"type": "websocket.accept"})
        while not self.release.is_set():  # noqa: ASYNC110 (set by the test thread)
            await asyncio.sleep(0.01)
        while (message := await receive()).get("text") != "end":
            seen.received.append(b"x" if message.get("bytes") else b"")
        await send({"type": "websocket.close", "code": 1000})

    async def refuse(self, receive: Any, send: Any, seen: Seen, offered: list[str]) -> None:
        await send({"type": "websocket.close"})

    async def hang(self, receive: Any, send: Any, seen: Seen, offered: list[str]) -> None:
        await receive()  # never answers; returns once the caller hangs up

    async def idle(self, receive: Any, send: Any, seen: Seen, offered: list[str]) -> None:
        await send({"type": "websocket.accept"})
        await receive()
        await asyncio.sleep(1.2)  # more than twice the router's read timeout
        await send({"type": "websocket.send", "text": "still here"})
        await self.relay_back(receive, send, seen)


@dataclass
class Refusal:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Edge:
    port: int
    portal: Portal

    def connect(self, path: str, host: str = NEW_HOST, **options: Any) -> ClientConnection:
        sock = small_buffers(socket.socket())
        sock.connect(("127.0.0.1", self.port))
        return connect(f"ws://{host}{path}", sock=sock, proxy=None, open_timeout=10, **options)

    def handshake(self, path: str, host: str = NEW_HOST, **headers: str) -> socket.socket:
        """A handshake sent on a raw socket: no client library in the way."""
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket"]
        lines += ["Connection: Upgrade", "Sec-WebSocket-Version: 13"]
        lines += ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        sock = socket.create_connection(("127.0.0.1", self.port), 10)
        sock.sendall("\r\n".join([*lines, "", ""]).encode())
        return sock

    def refusal(self, path: str, host: str = NEW_HOST, **headers: str) -> Refusal:
        """The HTTP answer to a handshake (on a raw socket, as clients follow redirects)."""
        received = b""
        with self.handshake(path, host, **headers) as sock:
            while data := sock.recv(65536):
                received += data
        head, _, body = received.partition(b"\r\n\r\n")
        status, *fields = head.decode("latin-1").split("\r\n")
        pairs = (field.partition(":") for field in fields)
        return Refusal(int(status.split()[1]), {n.lower(): v.strip() for n, _, v in pairs}, body)

    def seen(self, session: str) -> Seen:
        eventually(lambda: session in self.portal.seen)
        return self.portal.seen[session]


def small_buffers(sock: socket.socket) -> socket.socket:
    """Kernel buffers of 64 KiB at the test's ends (autotuning on loopback allows 32 MiB), so
    what piles up in edge is what shows."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, CHUNK)
    return sock


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer) -> Iterator[Edge]:
    prefix = prefix_with_modes(redis_server, {"swim": "setup", "dance": "active"})
    portal = Portal()
    with ExitStack() as running:
        listener = small_buffers(bound_socket())  # accepted sockets inherit the sizes
        server = running.enter_context(ServerThread(portal, sockets=[listener]))
        raw = settings_for(
            server.url,
            server.url,
            redis_server.url,
            prefix,
            upstream={"connect_timeout": 1.0, "read_timeout": 0.5},
            websocket={"max_message_size": 256 * 1024, "ping_interval": 5.0},
            policy=OPEN_TO_WEBSOCKETS,
        )
        _, public_url, _ = running.enter_context(run_edge(raw))
        yield Edge(int(public_url.rsplit(":", 1)[1]), portal)


def test_messages_go_both_ways_with_the_portals_subprotocol(edge: Edge) -> None:
    offered = ["v2.checkout", "v1.checkout"]
    with edge.connect("/swim/checkout/echo?id=both", subprotocols=offered) as ws:
        assert ws.subprotocol == "v1.checkout"
        ws.send("seconds left: 90")
        assert ws.recv() == "seconds left: 90"
        ws.send(b"\x00\xffbinary")
        assert ws.recv() == b"\x00\xffbinary"
    seen = edge.seen("both")
    assert seen.subprotocols == offered
    assert seen.received == ["seconds left: 90", b"\x00\xffbinary"]


def test_no_subprotocol_when_the_portal_chooses_none(edge: Edge) -> None:
    with edge.connect("/swim/echo?id=none", subprotocols=["graphql-ws"]) as ws:
        assert ws.subprotocol is None


def test_the_handshake_carries_the_routers_headers_and_the_clients_credentials(
    edge: Edge,
) -> None:
    forged = {
        "Cookie": "session=abc123",
        "Authorization": "Bearer t0ken",
        "X-Edge-Mode": "active",
        "X-Forwarded-For": "6.6.6.6",
    }
    with edge.connect("/swim/echo?id=headers", additional_headers=forged) as ws:
        request_id = ws.response.headers["x-request-id"]
    seen = edge.seen("headers")
    assert seen.header("cookie") == ["session=abc123"]
    assert seen.header("authorization") == ["Bearer t0ken"]
    assert seen.header("x-edge-tenant") == ["swim"]
    assert seen.header("x-edge-mode") == ["setup"]
    assert seen.header("x-forwarded-for") == ["127.0.0.1"]
    assert seen.header("x-forwarded-proto") == ["http"]
    assert seen.header("x-forwarded-host") == [NEW_HOST]
    assert seen.header("x-request-id") == [request_id]
    assert seen.header("host") == [NEW_HOST]
    assert len(seen.header("sec-websocket-key")) == 1


def test_a_legacy_tenant_reaches_the_legacy_portal(edge: Edge) -> None:
    with edge.connect("/acme/live/echo?id=legacy", host=LEGACY_HOST) as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
    assert edge.seen("legacy").header("x-edge-mode") == ["legacy"]


@pytest.mark.parametrize(
    ("host", "path", "status", "location"),
    [
        (NEW_HOST, "/acme/echo?id=r1", 403, None),  # not enabled: a handshake is a write
        (LEGACY_HOST, "/dance/echo?id=r2", 302, f"https://{NEW_HOST}/dance/?id=r2"),  # active
        ("evil.test", "/swim/echo?id=r3", 421, None),
        (NEW_HOST, "/-swim/echo?id=r4", 404, None),
    ],
)
def test_a_handshake_the_router_would_not_forward_gets_its_http_answer(
    edge: Edge, host: str, path: str, status: int, location: str | None
) -> None:
    response = edge.refusal(path, host)
    assert response.status == status
    assert response.headers.get("location") == location
    assert response.headers["x-request-id"]
    assert path.rsplit("=", 1)[1] not in edge.portal.seen


def test_a_method_override_cannot_open_a_write_channel_in_the_preview(edge: Edge) -> None:
    response = edge.refusal(
        "/swim/echo?id=override", X_HTTP_Method_Override="POST", Accept="application/json"
    )
    assert response.status == 403
    assert response.headers["x-edge-mode"] == "setup"
    assert json.loads(response.body)["mode"] == "setup"
    assert "override" not in edge.portal.seen


def test_the_portals_refusal_is_passed_on(edge: Edge) -> None:
    assert edge.refusal("/swim/refuse?id=refused").status == 403


def test_a_portal_that_never_answers_the_handshake_is_a_504(edge: Edge) -> None:
    response = edge.refusal("/swim/hang?id=hang")
    assert response.status == 504
    assert response.headers["x-request-id"]


def test_a_dead_portal_is_a_502(redis_server: RedisServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    raw = settings_for(dead, dead, redis_server.url, unique_prefix())
    with run_edge(raw) as (_, public_url, _):
        response = Edge(int(public_url.rsplit(":", 1)[1]), Portal()).refusal("/acme/x", LEGACY_HOST)
    assert response.status == 502


def test_the_clients_close_code_and_reason_reach_the_portal(edge: Edge) -> None:
    with edge.connect("/swim/echo?id=client-close") as ws:
        ws.send("bye")
        assert ws.recv() == "bye"
        ws.close(4001, "leaving checkout")
    eventually(lambda: edge.seen("client-close").closed is not None)
    assert edge.seen("client-close").closed == (4001, "leaving checkout")


def test_the_portals_close_code_and_reason_reach_the_client(edge: Edge) -> None:
    with edge.connect("/swim/close?id=portal-close") as ws:
        ws.send("time is up")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "done")


def test_a_portal_that_dies_closes_the_client_with_bad_gateway(edge: Edge) -> None:
    with edge.connect("/swim/crash?id=crash") as ws:
        ws.send("boom")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1014


def test_a_client_that_vanishes_closes_the_portals_connection(edge: Edge) -> None:
    with edge.connect("/swim/echo?id=vanish") as ws:
        ws.send("here")
        assert ws.recv() == "here"
        ws.socket.shutdown(socket.SHUT_RDWR)  # gone, without a close frame
        eventually(lambda: edge.seen("vanish").closed is not None)
    # uvicorn reports a vanished client as a close without a code (1005), which is sent on
    # as a normal closure: 1005 itself may not be sent.
    assert edge.seen("vanish").closed == (1000, "")


def test_an_idle_connection_outlives_the_read_timeout(edge: Edge) -> None:
    with edge.connect("/swim/idle?id=idle") as ws:
        ws.send("wait")
        assert ws.recv(timeout=10) == "still here"
        ws.send("and again")
        assert ws.recv(timeout=10) == "and again"


def test_a_message_over_the_limit_closes_with_1009(edge: Edge) -> None:
    with edge.connect("/swim/echo?id=big", max_size=None) as ws:
        ws.send(b"x" * (300 * 1024))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    eventually(lambda: edge.seen("big").closed is not None)
    assert edge.seen("big").received == []
    assert edge.seen("big").closed == (1009, "frame exceeds limit of 262144 bytes")


def _stalled(progress: Any) -> int:
    """Wait until progress() stops moving; its value then."""
    last, still = -1, 0
    while still < 10:
        time.sleep(0.05)
        value = progress()
        still = still + 1 if value == last else 0
        last = value
    return int(last)


def test_a_slow_client_holds_the_portal_back(edge: Edge) -> None:
    # Uncompressed, so that a message takes its size on the wire and in every buffer.
    with edge.connect("/swim/flood?id=flood", max_queue=4, compression=None) as ws:
        sent = _stalled(lambda: edge.seen("flood").sent)
        assert sent * CHUNK < 64 * 1024 * 1024, "messages piled up on the way to the client"
        for _ in range(FLOOD):
            assert len(ws.recv(timeout=10)) == CHUNK
        assert ws.recv(timeout=10) == "end"


def test_a_slow_portal_holds_the_client_back(edge: Edge) -> None:
    edge.portal.release.clear()
    sent = 0

    def pour(ws: ClientConnection) -> None:
        nonlocal sent
        for _ in range(FLOOD):
            ws.send(b"s" * CHUNK)
            sent += 1
        ws.send("end")

    with edge.connect("/swim/sink?id=sink", compression=None) as ws:
        sender = threading.Thread(target=pour, args=(ws,), daemon=True)
        sender.start()
        stalled_at = _stalled(lambda: sent)
        assert stalled_at * CHUNK < 64 * 1024 * 1024, "messages piled up on the way to the portal"
        edge.portal.release.set()
        sender.join(30)
        assert not sender.is_alive()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert len(edge.seen("sink").received) == FLOOD


class RawPortal:
    """A raw-socket portal: plain HTTP on /http (keep-alive, then an answer nobody asked for
    on the idle connection), and WebSocket handshakes whose path names what follows them: by
    default nothing, it never reads or answers again. It records, per connection, the first
    line it read."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.first_lines: list[bytes] = []
        self.strays = 0
        self.connections: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.connections.append(conn)
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            line = head.split(b"\r\n", 1)[0]
            self.first_lines.append(line)
            path = line.split(b" ")[1].split(b"?")[0].rsplit(b"/", 1)[1].decode()
            if path == "http":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                time.sleep(0.1)
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
                self.strays += 1
                self.closed.wait(30)
                return
            if path == "redirect":
                redirect = b"HTTP/1.1 302 Found\r\nLocation: ws://elsewhere/\r\n"
                conn.sendall(redirect + b"Content-Length: 0\r\n\r\n")
                return
            if path == "endless":
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
                for n in range(100_000):
                    conn.sendall(b"X-Flood-%d: %s\r\n" % (n, b"f" * 64))
                return
            conn.sendall(_accepting(head))
            conn.sendall(_CLOSES.get(path, b""))
            self.closed.wait(30)  # and keeps the TCP connection open

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        for conn in self.connections:
            conn.close()


def _accepting(head: bytes) -> bytes:
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 4.2.2
    digest = hashlib.sha1(accept, usedforsecurity=False).digest()
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % base64.b64encode(digest)
    )


def _close_frame(payload: bytes) -> bytes:
    return bytes([0x88, len(payload)]) + payload  # FIN + close, unmasked (a server's)


_CLOSES = {
    "no-code": _close_frame(b""),
    "private": _close_frame((4100).to_bytes(2, "big") + b"bye"),
    "reserved-1006": _close_frame((1006).to_bytes(2, "big")),
    "reserved-1015": _close_frame((1015).to_bytes(2, "big")),
    "out-of-range": _close_frame((5000).to_bytes(2, "big")),
}


@pytest.fixture(scope="module")
def pinging_edge(redis_server: RedisServer) -> Iterator[Edge]:
    """Pings every 0.2 s: the legacy front's portal answers them, the new front's never."""
    prefix = prefix_with_modes(redis_server, {"swim": "setup"})
    portal, silent = Portal(), RawPortal()
    with ExitStack() as running:
        running.callback(silent.close)
        server = running.enter_context(ServerThread(portal))
        raw = settings_for(
            server.url,
            silent.url,
            redis_server.url,
            prefix,
            websocket={"ping_interval": 0.2},
            policy=OPEN_TO_WEBSOCKETS,
        )
        _, public_url, _ = running.enter_context(run_edge(raw))
        yield Edge(int(public_url.rsplit(":", 1)[1]), portal)


def test_a_client_that_stops_answering_pings_is_dropped(pinging_edge: Edge) -> None:
    with pinging_edge.handshake("/acme/echo?id=silent", LEGACY_HOST) as silent:
        assert silent.recv(65536).startswith(b"HTTP/1.1 101")
        # ... and then never reads again, nor answers a ping.
        eventually(lambda: pinging_edge.seen("silent").closed is not None)


def test_a_portal_that_stops_answering_pings_is_dropped(pinging_edge: Edge) -> None:
    with pinging_edge.connect("/swim/live") as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1014


@pytest.fixture(scope="module")
def raw_edge(redis_server: RedisServer) -> Iterator[tuple[Edge, RawPortal]]:
    """close_timeout is read_timeout: 5 s here, so that only an immediate close passes."""
    prefix = prefix_with_modes(redis_server, {"swim": "setup"})
    portal = RawPortal()
    with ExitStack() as running:
        running.callback(portal.close)
        raw = settings_for(
            portal.url,
            portal.url,
            redis_server.url,
            prefix,
            upstream={"read_timeout": 5.0},
            policy=OPEN_TO_WEBSOCKETS,
        )
        _, public_url, _ = running.enter_context(run_edge(raw))
        yield Edge(int(public_url.rsplit(":", 1)[1]), Portal()), portal


def test_a_handshake_goes_on_a_new_connection_never_a_pooled_one(
    raw_edge: tuple[Edge, RawPortal],
) -> None:
    """An idle pooled connection holds an answer nobody asked for (a 101, even): the handshake
    never meets it, because it never goes on a connection that carried anything before."""
    edge, portal = raw_edge
    strays = portal.strays
    response = httpx.get(f"http://127.0.0.1:{edge.port}/swim/http", headers={"Host": NEW_HOST})
    assert response.text == "ok"
    eventually(lambda: portal.strays > strays)  # the stray answer is on the idle connection
    lines = len(portal.first_lines)
    with edge.connect("/swim/private") as ws, pytest.raises(ConnectionClosed):
        ws.recv(timeout=10)
    assert portal.first_lines[lines:] == [b"GET /swim/private HTTP/1.1"]  # a connection of its own


@pytest.mark.parametrize(
    ("path", "code", "reason"),
    [
        ("no-code", 1000, ""),  # 1005 describes it; a client may not be sent 1005
        ("private", 4100, "bye"),
        ("reserved-1006", 1014, "the portal connection failed"),
        ("reserved-1015", 1014, "the portal connection failed"),
        ("out-of-range", 1014, "the portal connection failed"),
    ],
)
def test_the_portals_close_reaches_the_client_at_once_as_a_code_it_may_receive(
    raw_edge: tuple[Edge, RawPortal], path: str, code: int, reason: str
) -> None:
    """The portal closes and then keeps its TCP connection open: the client hears of the close
    now, not when a close timeout runs out (5 s here)."""
    edge, _ = raw_edge
    with edge.connect(f"/swim/{path}") as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert time.monotonic() - started < 4
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (code, reason)


def test_a_portals_redirect_is_not_followed(raw_edge: tuple[Edge, RawPortal]) -> None:
    edge, portal = raw_edge
    lines = len(portal.first_lines)
    assert edge.refusal("/swim/redirect").status == 502
    assert len(portal.first_lines) == lines + 1  # one handshake, to the portal only


def test_a_handshake_answer_that_never_ends_is_a_502(raw_edge: tuple[Edge, RawPortal]) -> None:
    edge, _ = raw_edge
    assert edge.refusal("/swim/endless").status == 502
