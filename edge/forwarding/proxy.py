"""Act on a Forward decision: stream one request to a backend and its response back, raw ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from time import perf_counter
from typing import Any
from urllib.parse import quote_from_bytes

from edge.config import UpstreamSettings
from edge.core.asgi import BODY_STALLED, Receive, Scope, Send
from edge.core.responses import UPSTREAM_FAILURES, asks_for_json, send_refusal
from edge.forwarding.headers import (
    Backend,
    BodyFraming,
    ClientView,
    client_view,
    downstream_headers,
    trust_checker,
    upstream_headers,
)
from edge.forwarding.upstream import (
    Connection,
    Origin,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPool,
    request_head,
)
from edge.observe.served import CLIENT_CLOSED, STALLED, Outcome

_GONE = "client disconnected"
_WATCH_AFTER = 0.5  # seconds before a request still waiting for its answer watches its client
_WATCH_TICK = 0.1  # and at most this much later
_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# A request body up to this size is read whole before a portal connection is taken, so that a
# client that sends it slowly, or never, holds no place in the pool (uvicorn buffers as much
# before it stops reading the client's socket). A longer one streams, holding a place for as
# long as the client takes: such uploads may hold half the pool at most (_UploadPlaces).
_READ_AHEAD = 64 * 1024
_URL_SAFE = "/!$&'()*+,;=:@-._~%?"


class UpstreamAborted(Exception):
    """The backend failed after the response started.

    Raised out of ``forward`` so that the server aborts the client connection instead of
    completing a truncated response; ``outcome`` says what was sent.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


class _ClientGone(Exception):
    pass


class UploadsFull(UpstreamError):
    """Every place that uploads may hold in the pool is taken."""


class _UploadPlaces:
    """How many of a portal's pool places uploads streamed at their clients' pace may hold:
    half, so that clients sending slowly (or a byte per body_idle_timeout) cannot hold the
    portal from everyone else. A body that fits _READ_AHEAD never needs one."""

    def __init__(self, upstream: UpstreamSettings) -> None:
        self.limit = max(1, upstream.places_per_portal // 2)
        self.wait = upstream.connect_timeout
        self._free: dict[Origin, asyncio.Semaphore] = {}

    async def take(self, origin: Origin) -> _UploadPlace:
        free = self._free.get(origin)
        if free is None:
            free = self._free[origin] = asyncio.Semaphore(self.limit)
        try:
            async with asyncio.timeout(self.wait):
                await free.acquire()
        except TimeoutError:
            raise UploadsFull(
                f"all {self.limit} places for uploads to {origin.host}:{origin.port} stayed "
                f"taken for {self.wait:g} s"
            ) from None
        return _UploadPlace(free)


class _UploadPlace:
    __slots__ = ("_free",)

    def __init__(self, free: asyncio.Semaphore) -> None:
        self._free: asyncio.Semaphore | None = free

    def release(self) -> None:
        """Once the body is sent or the exchange has ended, whichever comes first."""
        if self._free is not None:
            self._free.release()
            self._free = None


class _WatchList:
    """The exchanges to watch once they have run _WATCH_AFTER seconds, all on one timer.

    A timer per request (call_later, then cancel) costs a few microseconds, a few percent of
    a forwarded request; an entry in this dict costs a tenth of that.
    """

    def __init__(self) -> None:
        self._due: dict[_Exchange, float] = {}  # all wait as long: insertion order is due order
        self._timer: asyncio.TimerHandle | None = None

    def add(self, exchange: _Exchange) -> None:
        loop = asyncio.get_running_loop()
        self._due[exchange] = loop.time() + _WATCH_AFTER
        if self._timer is None:
            self._timer = loop.call_later(_WATCH_AFTER, self._tick, loop)

    def discard(self, exchange: _Exchange) -> None:
        self._due.pop(exchange, None)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        due = self._due
        ready = []
        for exchange, at in due.items():
            if at > now:
                break
            ready.append(exchange)
        for exchange in ready:
            del due[exchange]
            exchange.watch()
        self._timer = loop.call_later(_WATCH_TICK, self._tick, loop) if due else None


class _Exchange:
    """One request's link to its client: reads its body and notices when it goes away.

    Noticing takes a task blocked on receive(), which costs about a tenth of the throughput
    if every request has one. So it starts only for a request still running after
    _WATCH_AFTER seconds, or once the response turns out to take more than one chunk.
    """

    __slots__ = (
        "_ahead",
        "_body_read",
        "_receive",
        "_task",
        "_watcher",
        "_watchlist",
        "cancelled",
        "client_gone",
        "whole",
    )

    def __init__(self, receive: Receive, has_body: bool, watchlist: _WatchList) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._body_read = not has_body  # until then body() is receive()'s only reader
        self._watchlist = watchlist
        self._watcher: asyncio.Task[None] | None = None
        self.client_gone = False
        self.cancelled = False
        self._ahead = b""  # the body's start, read before a portal connection is taken
        self.whole = not has_body  # all of the body has been received
        if not has_body:
            self.watch_later()

    async def read_ahead(self, limit: int) -> bool:
        """Read the body's first ``limit`` bytes, or all of a shorter one: True for all."""
        chunks = []
        size = 0
        while size < limit and not self.whole:
            chunk = await self._next()
            chunks.append(chunk)
            size += len(chunk)
        self._ahead = b"".join(chunks)
        return self.whole

    async def body(self) -> AsyncIterator[bytes]:
        ahead, self._ahead = self._ahead, b""
        if ahead:
            yield ahead
        while not self.whole:
            if chunk := await self._next():
                yield chunk
        self._body_read = True
        self.watch_later()

    async def _next(self) -> bytes:
        message = await self._receive()
        if message["type"] != "http.request":
            self.client_gone = True
            raise _ClientGone("client disconnected during the request body")
        self.whole = not message.get("more_body", False)
        chunk: bytes = message.get("body", b"")
        return chunk

    def watch_later(self) -> None:
        if self._task is not None:
            self._watchlist.add(self)

    def watch(self) -> None:
        """From now on, cancel the request's task when the client disconnects."""
        if self._task is not None and self._watcher is None and self._body_read:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(self._task))

    def finish(self) -> None:
        """Stop watching for good: before the last send, after which receive() returns."""
        self._task = None
        self._watchlist.discard(self)
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self, task: asyncio.Task[Any]) -> None:
        receive = self._receive
        while (await receive())["type"] != "http.disconnect":
            pass
        self.client_gone = self.cancelled = True
        task.cancel()

    def cancelled_alone(self) -> bool:
        """After CancelledError: was the client's disconnect its only cause?"""
        task = asyncio.current_task()
        return self.cancelled and task is not None and task.uncancel() == 0


class Forwarder:
    """Forwards requests to backends over one connection pool per process."""

    def __init__(self, upstream: UpstreamSettings, trusted_proxies: Sequence[str]) -> None:
        self._upstream = upstream
        self._trusted = trust_checker(trusted_proxies)
        self._pool: UpstreamPool | None = None
        self._watchlist = _WatchList()
        self._uploads = _UploadPlaces(upstream)

    async def start(self) -> None:
        """Create the process's pool; call inside the running loop."""
        self._watchlist = _WatchList()  # its timer belongs to this loop
        self._pool = UpstreamPool(self._upstream)
        self._uploads = _UploadPlaces(self._upstream)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def client_view(self, scope: Scope) -> ClientView:
        return client_view(scope, self._trusted)

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        backend: Backend,
        extra_headers: list[tuple[bytes, bytes]],
        view: ClientView,
    ) -> Outcome:
        pool = self._pool
        if pool is None:
            raise RuntimeError("Forwarder.start() has not run")
        origin = backend.origin
        headers, framing = upstream_headers(scope, view, extra_headers, backend)
        method: str = scope["method"]
        head = request_head(method, origin.path + request_target(scope), headers)
        exchange = _Exchange(receive, framing != "none", self._watchlist)
        started = perf_counter()  # loop.time() is uvloop's, in whole milliseconds
        status = sent = 0
        connection: Connection | None = None
        upload: asyncio.Task[None] | None = None
        place: _UploadPlace | None = None
        try:
            if framing != "none" and not await exchange.read_ahead(_READ_AHEAD):
                place = await self._uploads.take(origin)
            connection, upload = await _send(pool, origin, method, head, framing, exchange, place)
            try:
                status = connection.status
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": downstream_headers(
                            connection.headers,
                            status,
                            view.request_id.encode("latin-1"),
                            backend.rewrite,
                        ),
                    }
                )
                chunk = await connection.read()
                if not connection.at_eof:
                    exchange.watch()
                while not connection.at_eof:
                    sent += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    chunk = await connection.read()
                exchange.finish()
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
            except (UpstreamError, OSError) as exc:
                error = f"after {sent} bytes: {_describe(exc)}"
                raise UpstreamAborted(
                    Outcome(status, sent, perf_counter() - started, error)
                ) from exc
        except asyncio.CancelledError:
            if not exchange.cancelled_alone():
                raise
            return Outcome(status or CLIENT_CLOSED, sent, perf_counter() - started, _GONE)
        except (UpstreamError, _ClientGone, OSError) as exc:
            exchange.finish()
            if exchange.client_gone:
                seconds = perf_counter() - started
                if scope.get(BODY_STALLED):  # edge's protocol answered 408 unless it had begun
                    return Outcome(status or 408, sent, seconds, STALLED)
                return Outcome(status or CLIENT_CLOSED, sent, seconds, _GONE)
            status = _failure_status(exc)
            await send_upstream_failure(send, status, view.request_id, scope, extra_headers)
            return Outcome(status, 0, perf_counter() - started, _describe(exc))
        finally:
            exchange.finish()
            if place is not None:
                place.release()
            if connection is not None:
                if upload is not None and not upload.done():
                    upload.cancel()  # the answer ended before the body: the rest is not sent
                pool.release(connection)  # kept only if the exchange ended as framed
        return Outcome(status, sent, perf_counter() - started, None)


async def _send(
    pool: UpstreamPool,
    origin: Origin,
    method: str,
    head: bytes,
    framing: BodyFraming,
    exchange: _Exchange,
    place: _UploadPlace | None,
) -> tuple[Connection, asyncio.Task[None] | None]:
    """Send the request; return once the answer's head is in.

    A request with a safe method and no body is sent once more, on a new connection, when
    the portal closes the connection without a word: the usual fate of a pooled connection
    the portal has just timed out. A write is never sent twice.
    """
    retry = method in _SAFE and framing == "none"
    fresh = False
    while True:
        connection = await pool.acquire(origin, fresh)
        connection.send_head(head, method == "HEAD", framing != "none")
        upload = None
        if framing != "none":
            upload = asyncio.create_task(_upload(connection, exchange, framing == "chunked", place))
        try:
            await connection.head()
        except UpstreamDisconnected:
            pool.release(connection)
            if not retry or fresh:
                raise
            fresh = True
            continue
        except BaseException:
            if upload is not None:
                upload.cancel()
            pool.release(connection)
            raise
        return connection, upload


async def _upload(
    connection: Connection, exchange: _Exchange, chunked: bool, place: _UploadPlace | None
) -> None:
    try:
        await connection.send_body(exchange.body(), chunked)
    except (_ClientGone, UpstreamError, OSError) as exc:  # the exchange ends with it
        connection.fail(exc)
    finally:
        if place is not None:
            place.release()  # the client's pace no longer holds the place


def _failure_status(exc: BaseException) -> int:
    if isinstance(exc, TimeoutError):
        return 504
    return 503 if isinstance(exc, UploadsFull) else 502


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def request_target(scope: Scope) -> str:
    """The request's path and query exactly as the client sent them."""
    raw_path: bytes | None = scope.get("raw_path")
    path = _ascii(raw_path) if raw_path else quote_from_bytes(scope["path"].encode(), _URL_SAFE)
    query: bytes = scope["query_string"]
    return f"{path}?{_ascii(query)}" if query else path


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return quote_from_bytes(raw, _URL_SAFE)


# The rest of a refused upload is not wanted: close rather than read it.
_EXTRA = {503: [(b"retry-after", b"2"), (b"connection", b"close")]}


async def send_upstream_failure(
    send: Send,
    status: int,
    request_id: str,
    scope: Scope,
    edge_headers: list[tuple[bytes, bytes]],
) -> None:
    """edge's own 502, 503 or 504, when the portal gave no answer to pass on: a page or JSON as
    the client asks, with the tenant and mode the request was forwarded with (``edge_headers``)."""
    decided = dict(edge_headers)
    tenant, mode = decided.get(b"x-edge-tenant"), decided.get(b"x-edge-mode")
    await send_refusal(
        send,
        status,
        UPSTREAM_FAILURES[status],
        tenant=tenant.decode("latin-1") if tenant else None,
        mode=mode.decode("latin-1") if mode else None,
        as_json=asks_for_json(scope["headers"]),
        headers=[(b"x-request-id", request_id.encode("latin-1")), *_EXTRA.get(status, ())],
        head_only=scope["method"] == "HEAD",
    )
