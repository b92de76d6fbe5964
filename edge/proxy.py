"""Act on a Forward decision: stream one request to a backend and its response back, raw ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote_from_bytes

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from multidict import CIMultiDict
from yarl import URL

from edge.asgi import Receive, Scope, Send
from edge.config import UpstreamSettings
from edge.headers import (
    Backend,
    ClientView,
    client_view,
    downstream_headers,
    trust_checker,
    upstream_headers,
)
from edge.responses import send_response

CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer"
_GONE = "client disconnected"
_WATCH_AFTER = 0.5  # seconds before a request still waiting for its answer watches its client
_WATCH_TICK = 0.1  # and at most this much later
_SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_URL_SAFE = "/!$&'()*+,;=:@-._~%?"
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


@dataclass(slots=True)
class Outcome:
    """What one forwarded request came to: the status sent (499 if the client left first), body
    bytes sent to the client, seconds from sending upstream to the last byte relayed."""

    status: int
    bytes_out: int
    upstream_seconds: float
    error: str | None


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


class _NotRetried(Exception):
    pass


async def _never_retry(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    # aiohttp 3.14 (ClientSession._request) resends once on ClientOSError or
    # ServerDisconnectedError, from a fresh or a reused connection, for every method in
    # client.IDEMPOTENT_METHODS: GET HEAD OPTIONS TRACE, and also PUT and DELETE. POST and
    # PATCH are never retried. An exception outside those types ends its retry loop, so writes
    # go out at most once; safe methods keep the retry (it heals a stale pooled connection).
    try:
        return await handler(request)
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise _NotRetried from exc


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
        "_body_read",
        "_receive",
        "_task",
        "_watcher",
        "_watchlist",
        "cancelled",
        "client_gone",
    )

    def __init__(self, receive: Receive, has_body: bool, watchlist: _WatchList) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._body_read = not has_body  # until then body() is receive()'s only reader
        self._watchlist = watchlist
        self._watcher: asyncio.Task[None] | None = None
        self.client_gone = False
        self.cancelled = False
        if not has_body:
            self.watch_later()

    async def body(self) -> AsyncIterator[bytes]:
        receive = self._receive
        while True:
            message = await receive()
            if message["type"] != "http.request":
                self.client_gone = True
                raise _ClientGone("client disconnected during the request body")
            chunk: bytes = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        self._body_read = True
        self.watch_later()

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


class _ProxyRequest(ClientRequest):
    """Adds none of aiohttp's own headers (Accept, Accept-Encoding, User-Agent, Content-Type).

    The session's skip_auto_headers says the same, but makes aiohttp build and copy header
    dicts for every request to honour it: about 5% of the proxy's throughput.
    """

    _NO_AUTO: ClassVar[CIMultiDict[None]] = CIMultiDict((name, None) for name in NO_AUTO_HEADERS)

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = self._NO_AUTO


def upstream_timeout(upstream: UpstreamSettings) -> aiohttp.ClientTimeout:
    """Connect within connect_timeout; each read (and so the answer's head) within read_timeout."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=upstream.connect_timeout,
        sock_connect=upstream.connect_timeout,
        sock_read=upstream.read_timeout,
    )


class Forwarder:
    """Forwards requests to backends over one pooled aiohttp session per process."""

    def __init__(self, upstream: UpstreamSettings, trusted_proxies: Sequence[str]) -> None:
        self._upstream = upstream
        self._trusted = trust_checker(trusted_proxies)
        self._session: aiohttp.ClientSession | None = None
        self._watchlist = _WatchList()

    async def start(self) -> None:
        """Create the process's one pooled session; call inside the running loop."""
        upstream = self._upstream
        self._watchlist = _WatchList()  # its timer belongs to this loop
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=upstream.pool_size,
                limit_per_host=upstream.pool_size_per_host,
                keepalive_timeout=upstream.keepalive_timeout,
            ),
            timeout=upstream_timeout(upstream),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=NO_AUTO_HEADERS,
            request_class=_ProxyRequest,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        session = self._session
        if session is None:
            raise RuntimeError("Forwarder.start() has not run")
        client = scope.get("client")
        headers, has_body = upstream_headers(
            scope["headers"], view, client[0] if client else "", extra_headers, backend.keep_host
        )
        method: str = scope["method"]
        exchange = _Exchange(receive, has_body, self._watchlist)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status = sent = 0
        try:
            response = await session.request(
                method,
                URL(backend.url + request_target(scope), encoded=True),
                headers=headers,
                data=exchange.body() if has_body else None,
                allow_redirects=False,
                middlewares=None if method in _SAFE else (_never_retry,),
            )
            try:
                status = response.status
                content = response.content
                if not content.is_eof() and response.content_length is None:
                    _read_as_stream(response, self._upstream.stream_idle_timeout)
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": downstream_headers(
                            response.raw_headers,
                            status,
                            view.request_id.encode("latin-1"),
                            backend.rewrite,
                        ),
                    }
                )
                chunk = await content.readany()
                if not content.at_eof():
                    exchange.watch()
                while not content.at_eof():
                    sent += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    chunk = await content.readany()
                exchange.finish()
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
            except (aiohttp.ClientError, OSError) as exc:
                error = f"after {sent} bytes: {_describe(exc)}"
                raise UpstreamAborted(Outcome(status, sent, loop.time() - started, error)) from exc
            finally:
                response.release()  # closes, rather than pools, a connection not read to its end
        except asyncio.CancelledError:
            if not exchange.cancelled_alone():
                raise
            return Outcome(status or CLIENT_CLOSED, sent, loop.time() - started, _GONE)
        except (aiohttp.ClientError, _NotRetried, OSError) as exc:
            exchange.finish()
            if exchange.client_gone:
                return Outcome(CLIENT_CLOSED, 0, loop.time() - started, _GONE)
            # ServerTimeoutError and ConnectionTimeoutError are TimeoutErrors too.
            status = 504 if isinstance(exc, TimeoutError) else 502
            await send_upstream_failure(send, status, view.request_id)
            return Outcome(status, 0, loop.time() - started, _describe(exc))
        finally:
            exchange.finish()
        return Outcome(status, sent, loop.time() - started, None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _NotRetried) and exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def _read_as_stream(response: ClientResponse, idle_timeout: float) -> None:
    """From the headers on, the body's reads may wait up to idle_timeout (0: for ever).

    Until then aiohttp's sock_read (read_timeout) bounds every read; an event stream or a long
    poll is idle between events by design.
    """
    connection = response.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.read_timeout = idle_timeout or None
        connection.protocol.start_timeout()


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


_MESSAGES = {
    502: b"Bad Gateway: the portal could not be reached.\n",
    504: b"Gateway Timeout: the portal did not answer in time.\n",
}


async def send_upstream_failure(send: Send, status: int, request_id: str) -> None:
    """edge's own 502 or 504, when the portal gave no answer to pass on."""
    request_id_header = [(b"x-request-id", request_id.encode("latin-1"))]
    await send_response(
        send, status, _MESSAGES[status], b"text/plain; charset=utf-8", request_id_header
    )
