"""Logs as ops get them: `edge serve` as a real process, every stdout line read back as JSON."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.observe.logs import AccessLog, JsonFormatter
from edge.observe.served import Served
from tests.support.ports import free_port, wait_for_port
from tests.support.redis import RedisServer
from tests.support.servers import ServerThread
from tests.support.settings import ADMIN_TOKEN, LEGACY_HOST, NEW_HOST
from tests.support.stack import RecordingBackend
from tests.support.waiting import eventually

LEGACY = {"Host": LEGACY_HOST}
NEW = {"Host": NEW_HOST}

CONFIG = """
[server]
host = "127.0.0.1"
port = {public_port}
log_level = "{log_level}"
access_log = {access_log}
[store]
url = "{store_url}"
prefix = "{prefix}"
resync_interval = 0.2
[legacy]
hosts = ["{legacy_host}"]
backend = "{legacy_url}"
public_url = "https://{legacy_host}"
[new]
hosts = ["{new_host}"]
backend = "{new_url}"
public_url = "https://{new_host}"
[admin]
host = "127.0.0.1"
port = {admin_port}
token = "{token}"
"""


class EdgeProcess:
    """`edge serve` in a process of its own; its stdout is collected line by line."""

    def __init__(self, config: Path, public_port: int, admin_port: int, stderr: Path) -> None:
        self.public_url = f"http://127.0.0.1:{public_port}"
        self.admin_port = admin_port
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.stderr = stderr
        self.lines: list[str] = []
        with stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge", "serve", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=err,
                env={k: v for k, v in os.environ.items() if not k.startswith("EDGE_")},
            )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode())

    def wait_ready(self) -> None:
        wait_for_port(self.admin_port, timeout=30)
        eventually(lambda: httpx.get(f"{self.admin_url}/readyz").status_code == 200, within=15)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.reader.join(10)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def access(self, request_id: str) -> dict[str, Any]:
        """The access line of one request, once it has been written."""
        found: list[dict[str, Any]] = []

        def written() -> bool:
            found[:] = [r for r in self.records() if r.get("request_id") == request_id]
            return bool(found)

        eventually(written)
        assert len(found) == 1
        return found[0]

    def changes(self, message: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("message") == message]


@contextmanager
def edge_processes(
    tmp_path: Path,
    redis_server: RedisServer,
    prefix: str,
    count: int = 1,
    **server: str,
) -> Iterator[list[EdgeProcess]]:
    with ExitStack() as running:
        legacy = running.enter_context(ServerThread(RecordingBackend("legacy")))
        new = running.enter_context(ServerThread(RecordingBackend("new")))
        edges = []
        for number in range(count):
            config = tmp_path / f"edge-{number}.toml"
            public_port, admin_port = free_port(), free_port()
            config.write_text(
                CONFIG.format(
                    public_port=public_port,
                    admin_port=admin_port,
                    log_level=server.get("log_level", "info"),
                    access_log=server.get("access_log", "true"),
                    store_url=redis_server.url,
                    prefix=prefix,
                    legacy_host=LEGACY_HOST,
                    new_host=NEW_HOST,
                    legacy_url=legacy.url,
                    new_url=new.url,
                    token=ADMIN_TOKEN,
                )
            )
            edge = EdgeProcess(config, public_port, admin_port, tmp_path / f"edge-{number}.stderr")
            running.callback(edge.stop)
            edges.append(edge)
        for edge in edges:
            edge.wait_ready()
        yield edges


def test_one_json_line_per_request_with_what_ops_need(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
    redis_server.cli("SET", f"{prefix}mode:swim-school", "setup")
    with edge_processes(tmp_path, redis_server, prefix) as [edge]:
        with httpx.Client(base_url=edge.public_url) as client:
            forwarded = client.get("/acme-gym/classes?token=s3cret", headers=NEW)
            redirected = client.get("/acme-gym/classes", headers=LEGACY)
            blocked = client.post("/swim-school/book", headers=NEW, content=b"x=1")
            unknown = client.get("/acme-gym/", headers={"Host": "elsewhere.test"})

        line = edge.access(forwarded.headers["x-request-id"])
        assert datetime.fromisoformat(line.pop("time")).utcoffset() is not None
        duration, upstream = line.pop("duration_us"), line.pop("upstream_us")
        assert 0 <= upstream <= duration
        assert line == {
            "level": "info",
            "logger": "edge.access",
            "request_id": forwarded.headers["x-request-id"],
            "method": "GET",
            "front": "new",
            "tenant": "acme-gym",
            "mode": "active",
            "decision": "forward",
            "reason": None,
            "status": 200,
            "bytes": len(forwarded.content),
            "path": "/acme-gym/classes",
            "client": "127.0.0.1",
            "error": None,
        }
        line = edge.access(redirected.headers["x-request-id"])
        assert (line["decision"], line["status"], line["front"]) == ("redirect", 302, "legacy")
        assert line["bytes"] == len(redirected.content) and line["upstream_us"] is None
        line = edge.access(blocked.headers["x-request-id"])
        assert (line["decision"], line["reason"], line["status"]) == ("refuse", "blocked", 403)
        assert (line["method"], line["tenant"], line["mode"]) == ("POST", "swim-school", "setup")
        line = edge.access(unknown.headers["x-request-id"])
        assert (line["reason"], line["status"]) == ("unknown_host", 421)
        assert (line["front"], line["tenant"], line["mode"]) == (None, None, None)

    # Everything on stdout is JSON (uvicorn's own lines too), nothing else goes to stderr,
    # and a query string, which may carry a token, is never written.
    records = edge.records()
    assert all({"time", "level", "logger"} <= record.keys() for record in records)
    assert any(record["logger"].startswith("uvicorn") for record in records)
    assert "s3cret" not in "".join(edge.lines)
    assert edge.stderr.read_text() == ""


def test_a_mode_change_is_logged_once_by_the_instance_that_made_it(
    tmp_path: Path, redis_server: RedisServer, prefix: str
) -> None:
    with edge_processes(tmp_path, redis_server, prefix, count=2) as [maker, other]:
        moved = httpx.put(
            f"{maker.admin_url}/api/tenants/acme-gym",
            json={"mode": "setup", "actor": "alice"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert moved.status_code == 200
        with httpx.Client(base_url=other.public_url) as client:
            eventually(lambda: client.get("/acme-gym/", headers=NEW).status_code == 200)
            seen = client.get("/acme-gym/", headers=NEW)
        other.access(seen.headers["x-request-id"])  # the other has applied the event by now

        [change] = maker.changes("mode changed")
        assert {k: change[k] for k in ("level", "tenant", "from", "to", "actor", "via")} == {
            "level": "info",
            "tenant": "acme-gym",
            "from": None,
            "to": "setup",
            "actor": "alice",
            "via": "api",
        }
        assert other.changes("mode changed") == []

        # A raw edit has no maker: each instance that holds the tenant says what it found.
        with httpx.Client(base_url=maker.public_url) as client:
            assert client.get("/acme-gym/", headers=NEW).status_code == 200
        redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
        for edge in (maker, other):
            eventually(lambda edge=edge: edge.changes("mode changed in the store, found by resync"))
            [found] = edge.changes("mode changed in the store, found by resync")
            assert (found["tenant"], found["from"], found["to"]) == ("acme-gym", "setup", "active")


@pytest.mark.parametrize(
    ("access_log", "log_level"), [("false", "info"), ("true", "warning"), ("true", "error")]
)
def test_no_access_lines_when_switched_off_or_below_the_level(
    tmp_path: Path, redis_server: RedisServer, prefix: str, access_log: str, log_level: str
) -> None:
    with (
        edge_processes(
            tmp_path, redis_server, prefix, access_log=access_log, log_level=log_level
        ) as [edge],
        httpx.Client(base_url=edge.public_url) as client,
    ):
        assert client.get("/acme-gym/", headers=LEGACY).status_code == 200
    records = edge.records()  # complete: the process has stopped
    assert not [r for r in records if r["logger"] == "edge.access"]
    if log_level == "info":
        assert any(r["logger"].startswith("uvicorn") for r in records)
    else:
        assert not [r for r in records if r["level"] in ("debug", "info")]


def served(number: int, path: str = "/acme-gym/") -> Served:
    return Served(f"request-{number}", "GET", path, "203.0.113.9", status=200)


def test_a_stalled_stdout_never_blocks_the_caller_and_drops_past_the_bound() -> None:
    read_end, write_end = os.pipe()  # nobody reads it until the end: a stuck log collector
    log = AccessLog(write_end, max_pending=1000, interval=0.01)
    log.start()
    long_path = "/acme-gym/" + "p" * 1000
    for number in range(5000):  # far more than the pipe and the queue can hold
        log.write(served(number, long_path))
    assert log.dropped > 0

    received = bytearray()
    reader = threading.Thread(target=lambda: received.extend(_read_all(read_end)))
    reader.start()
    log.close()
    os.close(write_end)
    reader.join(10)
    lines = received.decode().splitlines()
    assert len(lines) == 5000 - log.dropped
    assert log.failed == 0
    numbers = [int(json.loads(line)["request_id"].split("-")[1]) for line in lines]
    assert numbers == sorted(numbers)  # whole lines, in order


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def test_a_closed_stdout_counts_lines_as_failed_and_the_writer_carries_on() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    log = AccessLog(write_end, interval=0.01)
    log.start()
    log.write(served(1))
    log.close()
    os.close(write_end)
    assert (log.failed, log.dropped) == (1, 0)


def test_other_logs_are_json_lines_with_their_extra_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("edge.modes").makeRecord(
            "edge.modes",
            logging.WARNING,
            __file__,
            1,
            "%s failed",
            ("resync",),
            sys.exc_info(),
            extra={"tenant": "acme-gym", "attempt": 2},
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["logger"] == "edge.modes"
    assert line["message"] == "resync failed"
    assert (line["tenant"], line["attempt"]) == ("acme-gym", 2)
    assert "ValueError: boom" in line["exception"]
    assert datetime.fromisoformat(line["time"]).utcoffset() is not None
