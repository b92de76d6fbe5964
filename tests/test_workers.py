"""`edge serve` with [server].workers = 2: two processes, each its own cache, both follow changes.

Which worker answered is read from Linux's own books, not from anything edge says: the test
finds the process that holds the server end of each connection by its socket inode in /proc.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.ports import free_port, wait_for_port
from tests.support.redis import RedisServer
from tests.support.servers import ServerThread
from tests.support.settings import LEGACY_HOST
from tests.support.stack import RecordingBackend
from tests.support.waiting import eventually

CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
workers = 2
access_log = false
log_level = "warning"
[store]
url = "{url}"
prefix = "{prefix}"
[legacy]
hosts = ["{legacy_host}"]
backend = "{backend}"
public_url = "https://{legacy_host}"
[new]
hosts = ["portal.test"]
backend = "{backend}"
public_url = "https://portal.test"
[admin]
host = "127.0.0.1"
port = {admin_port}
"""


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _proc_address(host: str, port: int) -> str:
    packed = bytes(int(part) for part in host.split("."))[::-1].hex().upper()
    return f"{packed}:{port:04X}"


def serving_process(connection: http.client.HTTPConnection, candidates: set[int]) -> int | None:
    """The process among ``candidates`` that holds the server end of ``connection``."""
    assert connection.sock is not None
    client, server = connection.sock.getsockname(), connection.sock.getpeername()
    ends = (_proc_address(*server), _proc_address(*client))
    inodes = [
        fields[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if tuple((fields := line.split())[1:3]) == ends
    ]
    for pid in candidates:
        try:
            links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            return pid
    return None


def status(connection: http.client.HTTPConnection, tenant: str) -> int:
    connection.request("GET", f"/{tenant}/", headers={"Host": LEGACY_HOST})
    response = connection.getresponse()
    response.read()
    return response.status


def keep_busy(pinned: dict[int, http.client.HTTPConnection]) -> None:
    """A worker closes a connection idle for 5 s, and on a busy machine finding the workers'
    connections or starting a command can take longer: a request on each keeps it open."""
    for connection in pinned.values():
        assert status(connection, "acme-gym") in (200, 302)


@pytest.fixture
def serve(
    redis_server: RedisServer, prefix: str, tmp_path: Path
) -> Iterator[tuple[int, int, Path]]:
    """`edge serve` with two workers: (its pid, its public port, its config file)."""
    with ExitStack() as running:
        backend = running.enter_context(
            ServerThread(RecordingBackend("legacy"), log_level="warning")
        )
        port = free_port()
        config = tmp_path / "edge.toml"
        config.write_text(
            CONFIG.format(
                port=port,
                admin_port=free_port(),
                url=redis_server.url,
                prefix=prefix,
                legacy_host=LEGACY_HOST,
                backend=backend.url,
            )
        )
        log = running.enter_context((tmp_path / "serve.log").open("wb"))
        process = subprocess.Popen(
            [sys.executable, "-m", "edge", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, timeout=60)
            yield process.pid, port, config
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def test_every_worker_follows_a_change(serve: tuple[int, int, Path]) -> None:
    pid, port, config = serve
    pinned: dict[int, http.client.HTTPConnection] = {}  # worker pid → a connection it serves
    try:
        # Both workers accept once both have started, which a busy machine takes a while to do.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            assert status(connection, "acme-gym") == 200  # legacy: forwarded
            worker = serving_process(connection, children(pid))
            assert worker is not None, "a connection that no child of `edge serve` holds"
            if worker in pinned:
                connection.close()
            else:
                pinned[worker] = connection
            if len(pinned) == 2:
                break
            keep_busy(pinned)
            time.sleep(0.05)
        assert len(pinned) == 2, "every connection went to the same worker"

        move = [sys.executable, "-m", "edge", "tenant", "set", "acme-gym", "active"]
        moving = subprocess.Popen([*move, "--config", str(config)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while moving.poll() is None and time.monotonic() < deadline:
            keep_busy(pinned)
            time.sleep(0.5)
        _, stderr = moving.communicate(timeout=10)
        assert moving.returncode == 0, stderr
        for worker, connection in pinned.items():
            eventually(lambda c=connection: status(c, "acme-gym") == 302)  # redirected
            assert serving_process(connection, {worker}) == worker
    finally:
        for connection in pinned.values():
            connection.close()
