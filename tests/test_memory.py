"""1 GiB up and 1 GiB down through the router (`edge serve`, a process of its own): bodies
stream, so the router's peak resident memory (VmHWM) barely moves, and not a byte changes."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from tests.support.process import EdgeProcess
from tests.support.settings import LEGACY_HOST, settings_for

GIB = 1024**3
BLOCK = bytes(range(256)) * 4096  # 1 MiB
ALLOWED_GROWTH = 64 * 1024 * 1024


class BulkPortal:
    """A blocking socket server, a thread per connection: /upload hashes the body it gets,
    /download?bytes=N sends N bytes of BLOCKs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> BulkPortal:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while request := stream.readline():
                headers = {}
                while (line := stream.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                target = request.split()[1].decode()
                if target.startswith("/acme/upload"):
                    digest, length = _digest_of(stream, int(headers["content-length"]))
                    body = json.dumps({"sha256": digest, "length": length}).encode()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                    )
                else:
                    size = int(target.partition("bytes=")[2])
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    for _ in range(size // len(BLOCK)):
                        conn.sendall(BLOCK)


def _digest_of(stream: BinaryIO, length: int) -> tuple[str, int]:
    digest, left = hashlib.sha256(), length
    while left:
        chunk = stream.read(min(left, len(BLOCK)))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest(), length - left


def expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    for _ in range(size // len(BLOCK)):
        digest.update(BLOCK)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProcess]:
    with BulkPortal() as portal:
        raw = settings_for(
            portal.url,
            portal.url,
            "memory://",
            "edge:",
            server={"access_log": False},
            upstream={"read_timeout": 30.0},
        )
        with EdgeProcess(raw, tmp_path_factory.mktemp("memory")) as process:
            upload(process, 4 * len(BLOCK))  # warm: the pools, the code paths
            download(process, 4 * len(BLOCK))
            yield process


def head_of_ok(stream: BinaryIO) -> int:
    """Read a response's head, which must be a 200; its Content-Length (0 if none)."""
    status = stream.readline()
    length = 0
    while (line := stream.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    assert status.split()[1] == b"200", status
    return length


def upload(edge: EdgeProcess, size: int) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", edge.port), 60) as sock:
        sock.sendall(
            b"PUT /acme/upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n"
            % (LEGACY_HOST.encode(), size)
        )
        for _ in range(size // len(BLOCK)):
            sock.sendall(BLOCK)
        with sock.makefile("rb") as stream:
            length = head_of_ok(stream)
            answer: dict[str, object] = json.loads(stream.read(length))
    return answer


def download(edge: EdgeProcess, size: int) -> tuple[str, int]:
    with socket.create_connection(("127.0.0.1", edge.port), 60) as sock:
        sock.sendall(
            b"GET /acme/download?bytes=%d HTTP/1.1\r\nHost: %s\r\n\r\n"
            % (size, LEGACY_HOST.encode())
        )
        with sock.makefile("rb") as stream:
            length = head_of_ok(stream)
            assert length == size
            return _digest_of(stream, length)


def test_a_gibibyte_upload_streams_through(edge: EdgeProcess) -> None:
    before = edge.peak_rss()
    answer = upload(edge, GIB)
    growth = edge.peak_rss() - before
    assert answer == {"sha256": expected_digest(GIB), "length": GIB}
    assert growth < ALLOWED_GROWTH, f"peak RSS grew by {growth / 2**20:.1f} MiB"


def test_a_gibibyte_download_streams_through(edge: EdgeProcess) -> None:
    before = edge.peak_rss()
    digest, length = download(edge, GIB)
    growth = edge.peak_rss() - before
    assert (digest, length) == (expected_digest(GIB), GIB)
    assert growth < ALLOWED_GROWTH, f"peak RSS grew by {growth / 2**20:.1f} MiB"
