"""Server-sent events and long polls through the router: unbuffered, and not cut by read_timeout.

The router's read_timeout (0.3 s here) bounds the wait for response headers and the reads of a
body with a Content-Length; a streamed body may be idle up to stream_idle_timeout (1.5 s here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.support.redis import RedisServer, unique_prefix
from tests.support.servers import ServerThread
from tests.support.settings import LEGACY_HOST, settings_for
from tests.support.stack import run_edge
from tests.support.waiting import Signals, wait_event

READ_TIMEOUT = 0.3
IDLE_TIMEOUT = 1.5
GAP = 3 * READ_TIMEOUT  # between events: longer than read_timeout, shorter than the idle limit
EVENT_STREAM = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class StreamingPortal:
    def __init__(self) -> None:
        self.signals = Signals()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        route = getattr(self, scope["path"].rsplit("/", 1)[1])
        await route(send, receive, query["id"])

    async def events(self, send: Any, receive: Any, id: str) -> None:
        """Event 1; event 2 only once the client has event 1, and GAP later; then the end."""
        await send({"type": "http.response.start", "status": 200, "headers": EVENT_STREAM})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        released = await wait_event(self.signals[id + ":got-1"])
        await asyncio.sleep(GAP)
        event = b"data: 2\n\n" if released else b"data: timed out\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def poll(self, send: Any, receive: Any, id: str) -> None:
        """A long poll that sends its headers at once and its answer GAP later."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(GAP)
        await send({"type": "http.response.body", "body": b'{"seats": 3}'})

    async def quiet(self, send: Any, receive: Any, id: str) -> None:
        """One event, then silence until the caller hangs up."""
        await send({"type": "http.response.start", "status": 200, "headers": EVENT_STREAM})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        self.signals[id + ":disconnected"].set()


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer) -> Iterator[tuple[httpx.Client, StreamingPortal]]:
    portal = StreamingPortal()
    with ExitStack() as running:
        server = running.enter_context(ServerThread(portal))
        raw = settings_for(
            server.url,
            server.url,
            redis_server.url,
            unique_prefix(),
            upstream={"read_timeout": READ_TIMEOUT, "stream_idle_timeout": IDLE_TIMEOUT},
        )
        _, public_url, _ = running.enter_context(run_edge(raw))
        client = running.enter_context(
            httpx.Client(base_url=public_url, headers={"Host": LEGACY_HOST}, timeout=10)
        )
        yield client, portal


def test_events_arrive_one_by_one_and_outlive_the_read_timeout(
    edge: tuple[httpx.Client, StreamingPortal],
) -> None:
    client, portal = edge
    with client.stream("GET", "/acme/live/events?id=e1") as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = response.iter_lines()
        assert next(lines) == "data: 1"  # before the portal has even written event 2
        portal.signals["e1:got-1"].set()
        assert [line for line in lines if line] == ["data: 2"]


def test_a_long_poll_answered_after_the_read_timeout_arrives_whole(
    edge: tuple[httpx.Client, StreamingPortal],
) -> None:
    client, _ = edge
    response = client.get("/acme/live/poll?id=p1")
    assert response.status_code == 200
    assert response.json() == {"seats": 3}


def test_a_stream_idle_past_its_limit_is_cut_and_never_looks_complete(
    edge: tuple[httpx.Client, StreamingPortal],
) -> None:
    client, portal = edge
    with client.stream("GET", "/acme/live/quiet?id=q1") as response:
        lines = response.iter_lines()
        assert next(lines) == "data: 1"
        with pytest.raises(httpx.RemoteProtocolError):
            list(lines)
    assert portal.signals["q1:disconnected"].wait(10), "the portal was left streaming to nobody"
