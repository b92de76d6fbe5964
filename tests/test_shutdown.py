"""SIGTERM to `edge serve`: no new connections, requests in flight finish (up to
[server].graceful_timeout), then exit status 0."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.process import EdgeProcess
from tests.support.redis import RedisServer, unique_prefix
from tests.support.servers import ServerThread
from tests.support.settings import LEGACY_HOST, settings_for
from tests.support.waiting import eventually

BLOCK = bytes(range(256)) * 4096  # 1 MiB
BLOCKS = 8


class HashingPortal:
    """Hashes each upload it receives, saying when one has begun; echoes WebSocket messages."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.closed: list[int] = []  # the close codes of its WebSockets

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            return await self.echo(receive, send)
        if scope["type"] != "http":
            return
        digest, length = hashlib.sha256(), 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            if message.get("body"):
                self.started.set()
            digest.update(message.get("body", b""))
            length += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = json.dumps({"sha256": digest.hexdigest(), "length": length}).encode()
        length_header = (b"content-length", str(len(body)).encode())
        await send({"type": "http.response.start", "status": 200, "headers": [length_header]})
        await send({"type": "http.response.body", "body": body})

    async def echo(self, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message["text"]})
        self.closed.append(message["code"])


class SlowUpload(threading.Thread):
    """PUTs BLOCKS MiB: the first at once, the rest once ``resume`` is set."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.resume = threading.Event()
        self.reply = b""

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), 30) as sock:
            sock.sendall(
                b"PUT /acme/upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
                % (LEGACY_HOST.encode(), BLOCKS * len(BLOCK))
            )
            sock.sendall(BLOCK)
            self.resume.wait(30)
            try:
                for _ in range(BLOCKS - 1):
                    sock.sendall(BLOCK)
                while data := sock.recv(65536):
                    self.reply += data
            except OSError:  # cut off
                pass


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def portal() -> Iterator[tuple[ServerThread, HashingPortal]]:
    app = HashingPortal()
    with ServerThread(app) as server:
        yield server, app


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_an_upload_in_flight_finish_then_exits_0(
    portal: tuple[ServerThread, HashingPortal],
    redis_server: RedisServer,
    tmp_path: Path,
    workers: int,
) -> None:
    server, app = portal
    store = "memory://" if workers == 1 else redis_server.url  # memory:// is one process only
    raw = settings_for(
        server.url,
        server.url,
        store,
        unique_prefix(),
        server={"workers": workers, "graceful_timeout": 30},
    )
    with EdgeProcess(raw, tmp_path) as edge:
        upload = SlowUpload(edge.port)
        upload.start()
        assert app.started.wait(30), "the upload never reached the portal"
        assert edge.process is not None
        edge.process.send_signal(signal.SIGTERM)
        eventually(lambda: refused(edge.port) and refused(edge.admin_port), within=10)
        upload.resume.set()
        upload.join(30)
        assert edge.wait_exit(30) == 0, edge.output()

    head, _, body = upload.reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), upload.reply[:500]
    expected = hashlib.sha256(BLOCK * BLOCKS).hexdigest()
    assert json.loads(body) == {"sha256": expected, "length": BLOCKS * len(BLOCK)}


def test_a_request_longer_than_the_grace_period_is_cut_and_edge_still_exits_0(
    portal: tuple[ServerThread, HashingPortal], tmp_path: Path
) -> None:
    server, app = portal
    raw = settings_for(server.url, server.url, "memory://", "edge:", server={"graceful_timeout": 1})
    with EdgeProcess(raw, tmp_path) as edge:
        upload = SlowUpload(edge.port)  # never resumed
        upload.start()
        assert app.started.wait(30)
        assert edge.process is not None
        edge.process.send_signal(signal.SIGTERM)
        assert edge.wait_exit(30) == 0, edge.output()
    upload.resume.set()
    upload.join(10)
    assert not upload.reply.startswith(b"HTTP/1.1 200")


def test_sigterm_closes_websockets_both_ways_as_a_restart(
    portal: tuple[ServerThread, HashingPortal], tmp_path: Path
) -> None:
    """An open WebSocket does not hold the shutdown for the grace period: both sides are told
    1012 (service restart), so clients reconnect to another instance."""
    server, app = portal
    raw = settings_for(
        server.url, server.url, "memory://", "edge:", server={"graceful_timeout": 30}
    )
    with EdgeProcess(raw, tmp_path) as edge:
        sock = socket.create_connection(("127.0.0.1", edge.port), 10)
        with connect(f"ws://{LEGACY_HOST}/acme/live", sock=sock, proxy=None) as ws:
            ws.send("still there?")
            assert ws.recv(timeout=10) == "still there?"
            assert edge.process is not None
            edge.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert edge.wait_exit(30) == 0, edge.output()
    eventually(lambda: app.closed == [1012])
