"""The forwarding leg's HTTP/1.1 client: keep-alive connections to the portals, pooled.

aiohttp's ClientSession spent most of a forwarded request's CPU on per-request machinery a
proxy does not use (sessions, cookies, redirects, middlewares, URL objects, timers): a raw
ASGI app forwarding through it served 12,900 req/s on the bench's machine, the same app with
this leg 33,500. What is left is what a proxy needs: httptools (the parser uvicorn
uses) reads the answers, bodies stream both ways under flow control, and one timer per pool,
not per read, enforces the timeouts.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import cast
from urllib.parse import urlsplit

import httptools

from edge.config import UpstreamSettings

Header = tuple[bytes, bytes]

_HIGH_WATER = 2**17  # buffered body bytes at which the backend's connection stops being read
# Body pieces shorter than this are held joined: one object per two-byte chunk would cost
# 25 times the chunk's bytes, and a read's worth of them come in before reading can stop.
_SMALL_PIECE = 512
_TICK_MIN, _TICK_MAX = 0.01, 1.0  # how often the pool's one timer looks for overdue reads
_HEAD_END = b"\r\n\r\n"


class UpstreamError(Exception):
    """The portal gave no usable answer."""


class UpstreamConnectError(UpstreamError):
    """No connection to the portal."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The portal did not answer, or stopped answering, in time."""


class UpstreamDisconnected(UpstreamError):
    """The portal closed the connection before its answer was complete."""


class UpstreamProtocolError(UpstreamError):
    """The portal's answer is not HTTP/1.x that a proxy can pass on."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a portal URL's requests go: host, port, TLS, its Host header and path prefix.

    Connections are pooled per origin: two fronts with the same URL but other TLS settings (a
    client certificate of their own) never share one.
    """

    host: str
    port: int
    tls: ssl.SSLContext | None
    host_header: bytes
    path: str

    @staticmethod
    @lru_cache(maxsize=64)
    def of(url: str, tls: ssl.SSLContext | None = None) -> Origin:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        if secure and tls is None:
            tls = _default_tls()
        # Host is the URL's host and port, whatever userinfo the URL might carry.
        authority = parts.netloc.rpartition("@")[2]
        port = parts.port or (443 if secure else 80)
        return Origin(parts.hostname or "", port, tls, authority.encode(), parts.path.rstrip("/"))


@lru_cache(maxsize=1)
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def request_head(method: str, target: str, headers: Iterable[Header]) -> bytes:
    parts = [method.encode(), b" ", target.encode(), b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class _Signal:
    """A task's wait for what a protocol callback reports; one waiter at a time."""

    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] | None = None

    @property
    def waiting(self) -> bool:
        future = self._future
        return future is not None and not future.done()

    def wait(self) -> asyncio.Future[None]:
        """What the next fire() resolves (a future, not a coroutine: no frame per wait)."""
        self._future = future = self._loop.create_future()
        return future

    def fire(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection to a portal, carrying one exchange at a time.

    It carries the next exchange only if the last one ended exactly as framed both ways (see
    ``reusable``); anything else closes it. A head (interim answers included) and a trailer
    section reach the parser within the configured bytes, and in whole lines after their
    first read, so that no header value is built up by repeated concatenation and none grows
    without bound.
    """

    # Slots: past 30 attributes an instance's __dict__ loses CPython's fast attribute access.
    __slots__ = (
        "_answer",
        "_buffered",
        "_chunks",
        "_client_turn",
        "_complete",
        "_drained",
        "_early",
        "_eof",
        "_error",
        "_expecting",
        "_fields",
        "_framed",
        "_gate",
        "_has_length",
        "_head_done",
        "_head_only",
        "_held",
        "_in_parts",
        "_interim",
        "_keep_alive",
        "_last_progress",
        "_loop",
        "_parser",
        "_pending_head",
        "_reading_paused",
        "_request_sent",
        "_room",
        "_timeout",
        "_trailing",
        "_uploading",
        "_writing_paused",
        "closed",
        "counted",
        "headers",
        "idle_since",
        "origin",
        "pool",
        "status",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        self._answer = _Signal(self._loop)  # more of the answer came, or the connection ended
        self._drained = _Signal(self._loop)  # the portal read what was written
        self._last_progress = 0.0
        self._timeout = pool.read_timeout
        self._writing_paused = False
        self._reading_paused = False
        self._client_turn = False
        self._pending_head = b""  # a request head waiting for its body's first chunk
        # The request, as far as it has gone.
        self._expecting = False  # from the request's head on the wire until its answer is whole
        self._request_sent = False  # its last byte is handed to the transport
        self._uploading = False  # it has a body
        # The exchange's answer, as far as it has come.
        self.status = 0
        self.headers: list[Header] = []
        self._fields: list[Header] = []  # the section being parsed: a head, or trailers
        self._framed = False  # its end is announced (Content-Length or chunked)
        self._has_length = False
        self._interim = False
        self._head_done = False
        self._early = False  # its head came before the request was sent whole
        self._complete = False
        self._keep_alive = False
        self._chunks: collections.deque[bytes | bytearray] = collections.deque()
        self._buffered = 0
        self._error: BaseException | None = None
        self._eof = False  # the portal ended the connection cleanly (FIN, or TLS close_notify)
        # Lines of a head or trailer section are held here until whole; None: straight through.
        self._held = bytearray()
        self._gate: bytearray | None = None
        self._room = 0  # bytes the section may still take
        self._in_parts = False  # the head came in more than one read
        self._trailing = False
        self.closed = False
        self.counted = True  # holds one of the pool's places until it is retired

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        gate = self._gate
        if gate is None:  # a body: straight to the parser
            self._last_progress = self._loop.time()
        elif self._in_parts or self._head_done or len(data) > self._room:
            self._through_gate(data)
            return
        else:  # the first read of a head, within the budget: parsed as it is
            self._room -= len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._unparsable(exc)
        if gate is not None and not self._head_done:
            # The head goes on in later reads: line by line from here, so that a value cut by
            # this read ends in one more piece, not one per read.
            self._in_parts = True

    def eof_received(self) -> bool | None:
        self._eof = True
        self._ended(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        self._writing_paused = False
        self._answer.fire()
        self._drained.fire()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._drained.fire()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._expecting:
            raise UpstreamProtocolError("the portal sent an answer to no request")
        self._fields = []
        self._framed = self._has_length = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:  # a trailer field: dropped
            return
        if len(name) == 14 and name.lower() == b"content-length":
            self._framed = self._has_length = True
            value = b"%d" % int(value)  # the parser checked the digits; "005" goes as "5"
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            # Any other coding would be dropped with this hop-by-hop field, and its bytes
            # reach the client as the body itself (nginx refuses them too).
            if self._framed or value.strip().lower() != b"chunked":
                raise UpstreamProtocolError(f"the portal's answer has Transfer-Encoding {value!r}")
            self._framed = True
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        fields = self._fields
        if len(fields) > self.pool.max_headers:
            raise UpstreamProtocolError(
                f"the portal's answer has over {self.pool.max_headers} header fields"
            )
        status = self._parser.get_status_code()
        if not 200 <= status < 600:
            self._interim = self._interim_status(status)
            return
        self.status = status
        self.headers = fields
        self._fields = []  # trailers, if any, gather apart and are dropped
        self._keep_alive = self._parser.should_keep_alive()
        if self._uploading and (
            not self._request_sent or (self.transport and self.transport.get_write_buffer_size())
        ):
            self._early = True  # the portal may not have read the whole body
        no_body = self._head_only or status in (204, 304)
        if not no_body and not self._has_length:  # a stream: events, a long poll
            self._timeout = self.pool.stream_idle_timeout
        self._head_done = True
        self._gate = None
        self._last_progress = self._loop.time()  # the body's time starts
        if self._head_only:
            # httptools cannot be told a HEAD answer has no body: it would wait for one.
            self._keep_alive = False
            self._finish()
        self._answer.fire()

    @staticmethod
    def _interim_status(status: int) -> bool:
        """True for an interim answer (100 Continue, 103 Early Hints: skipped); raises for a
        status no client may be sent."""
        if 100 <= status < 200:
            return True
        raise UpstreamProtocolError(f"the portal answered with status {status}")

    def on_body(self, body: bytes) -> None:
        self._gate = None  # after a chunk header: this is its data, not a trailer section
        if self._complete:
            return
        chunks = self._chunks
        if len(body) >= _SMALL_PIECE:
            chunks.append(body)
        elif chunks and type(tail := chunks[-1]) is bytearray and len(tail) < _SMALL_PIECE:
            tail += body
        else:
            chunks.append(bytearray(body))
        self._buffered += len(body)
        if self._buffered >= _HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._answer.fire()

    def on_chunk_header(self) -> None:
        # Data follows, or (after the last chunk) the trailer section: held until it is seen.
        self._gate = self._held

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._finish()
        self._answer.fire()

    # -- the exchange --------------------------------------------------------------------------

    def send_head(self, head: bytes, head_only: bool, body_follows: bool) -> None:
        """Start an exchange with the request head. One whose body follows goes out with the
        body's first chunk: a request whose body turns out broken never reaches the portal."""
        self._head_only = head_only
        self.status = 0
        self._head_done = self._complete = self._early = self._trailing = False
        self._request_sent = self._in_parts = False
        self._uploading = body_follows
        self._timeout = self.pool.read_timeout
        self._last_progress = self._loop.time()
        self._gate = self._held
        self._room = self.pool.max_head_bytes
        if body_follows:
            self._pending_head = head
        else:
            assert self.transport is not None
            self.transport.write(head)
            self._expecting = self._request_sent = True
        self.pool.track(self)

    async def send_body(self, chunks: AsyncIterator[bytes], chunked: bool) -> None:
        """Write the request body as it comes, at the pace the portal reads it."""
        transport = self.transport
        assert transport is not None
        loop = self._loop
        client = aiter(chunks)
        while True:
            self._client_turn = True  # the portal is not late while the client is
            try:
                chunk = await anext(client)
            except StopAsyncIteration:
                break
            finally:
                self._client_turn = False
            if self._error is not None or self._complete:
                # The portal has answered, or gone: the rest is not wanted, and the portal
                # would read it as the next request. The connection ends with the exchange.
                self.close()
                return
            data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
            if self._pending_head:
                data, self._pending_head = self._pending_head + data, b""
                self._expecting = True
            transport.write(data)
            self._last_progress = loop.time()
            if self._writing_paused:
                await self._wait(self._drained)
        if self._error is None and not self._complete:
            transport.write(self._pending_head + (b"0\r\n\r\n" if chunked else b""))
            self._pending_head = b""
            self._expecting = self._request_sent = True
        self._last_progress = loop.time()  # from here the portal's answer is due

    async def head(self) -> None:
        """Wait for the answer's status and headers."""
        while not self._head_done:
            await self._wait(self._answer)

    async def read(self) -> bytes:
        """The next part of the body as it arrives; b"" at its end."""
        while not self._chunks:
            if self._complete:
                return b""
            await self._wait(self._answer)
        chunks = self._chunks
        chunk = bytes(chunks.popleft()) if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    def reusable(self) -> bool:
        """Whether the exchange ended exactly as framed, both ways: the whole request written
        before its answer began, the whole answer read and passed on, nothing more from the
        portal (stray bytes close the connection), and the portal keeps the connection open.

        The one question asked before a connection goes back to the pool.
        """
        return (
            self._complete
            and self._request_sent
            and not self._early
            and self._keep_alive
            and not self.closed
            and not self._chunks
        )

    def overdue(self, now: float) -> bool:
        return (
            (self._answer.waiting or self._drained.waiting)
            and not self._client_turn
            and self._timeout > 0
            and now - self._last_progress > self._timeout
        )

    def time_out(self) -> None:
        if self._head_done:
            late = f"sent nothing for {self._timeout:g} s (the rest of its answer)"
        else:
            late = f"did not send its answer's head within {self._timeout:g} s"
        self.fail(UpstreamTimeout(f"the portal {late}"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- inside ------------------------------------------------------------------------------

    def _through_gate(self, data: bytes) -> None:
        """Pass ``data`` to the parser in whole lines while a head or trailer section is read,
        holding a line's start until its end arrives; what follows the section goes straight.

        A head's bytes do not restart its timer: the whole head is due within read_timeout.
        """
        self._in_parts = True
        if self._head_done and not self._trailing:
            # A chunk header came last: its data follows, or the trailer section does. One byte
            # tells (on_body lifts the gate); a trailer section has a budget of its own.
            self._last_progress = self._loop.time()
            if not self._parse(data[:1]) or len(data) == 1:
                return
            if self._gate is None:
                self._parse(data[1:])
                return
            self._trailing = True
            self._room = self.pool.max_head_bytes - 1
            data = data[1:]
        held = self._held
        free = self._room - len(held)  # bytes this read may add to the section
        if not held:
            cut = data.find(_HEAD_END, 0, free) + 4
            if cut > 3:  # more than the budget in this read, but a head ends within it
                self._room = free - cut
                view = memoryview(data)
                if not self._parse(view[:cut]):
                    return
                if self._gate is None:
                    self._parse(view[cut:])
                else:
                    self._through_gate(data[cut:])  # after an interim answer: the next head
                return
        end = data.rfind(b"\n", 0, free) + 1  # whole lines, within the budget
        if not end:
            if len(data) >= free:
                self._too_large()
            else:
                held += data
            return
        self._room = free - end
        if held:
            held += memoryview(data)[:end]
            lines = bytes(held)
            held.clear()
        else:
            lines = data[:end]
        if not self._parse(lines) or end == len(data):
            return
        rest = data[end:]
        if self._gate is None or (self._head_done and not self._trailing):
            self.data_received(rest)  # the body, or a chunk header's data: as any read
        elif len(rest) >= self._room:
            self._too_large()
        else:
            held += rest

    def _parse(self, data: bytes | memoryview) -> bool:
        """Feed the parser; False once the connection has failed."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._unparsable(exc)
        return not self.closed

    def _unparsable(self, exc: httptools.HttpParserError) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            self.fail(UpstreamProtocolError("the portal switched protocols on a plain request"))
        elif isinstance(exc.__context__, UpstreamError):  # raised in a callback: it says why
            self.fail(exc.__context__)
        else:
            self.fail(UpstreamProtocolError(f"the portal's answer is not HTTP/1.1: {exc}"))

    def _too_large(self) -> None:
        section = "trailer section" if self._trailing else "head"
        limit = self.pool.max_head_bytes
        self.fail(UpstreamProtocolError(f"the portal's answer {section} is over {limit} bytes"))

    async def _wait(self, signal: _Signal) -> None:
        if self._error is not None:
            raise self._error
        await signal.wait()
        if self._error is not None:
            raise self._error

    def _finish(self) -> None:
        self._complete = True
        self._expecting = False
        self._gate = None
        self.pool.untrack(self)

    def fail(self, error: BaseException) -> None:
        """End the exchange with ``error`` (unless its answer is complete) and the connection."""
        if self._error is None and not self._complete:
            self._error = error
        self.close()
        self._answer.fire()
        self._drained.fire()

    def _ended(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.retire(self)
        if self._complete or self._error is not None:
            return
        if self._head_done and not self._framed and self._eof:
            # A body that runs until the connection closes: a clean close is its end. A reset,
            # or TLS cut without its close_notify, is not.
            self._finish()
            return
        detail = f": {exc}" if exc else ""
        self._error = UpstreamDisconnected(f"the portal closed the connection{detail}")


class UpstreamPool:
    """Keep-alive connections to the portals, per origin, within the configured limits.

    Each portal holds at most ``places_per_portal`` of the pool's places and has its own queue
    of requests waiting for one, so that a portal that hangs holds up only its own front.
    """

    def __init__(self, settings: UpstreamSettings) -> None:
        self.read_timeout = settings.read_timeout
        self.stream_idle_timeout = settings.stream_idle_timeout
        self.connect_timeout = settings.connect_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.max_head_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.limit = settings.pool_size
        self.limit_per_origin = settings.places_per_portal
        self._idle: dict[Origin, collections.deque[Connection]] = {}  # oldest first
        self._busy: set[Connection] = set()
        self._open: collections.Counter[Origin] = collections.Counter()
        self._total = 0
        self._waiters: dict[Origin, collections.deque[asyncio.Future[None]]] = {}
        self._tracked: dict[Connection, None] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._reaper: asyncio.TimerHandle | None = None
        shortest = min(t for t in (self.read_timeout, self.stream_idle_timeout) if t > 0)
        self._tick = min(max(shortest / 10, _TICK_MIN), _TICK_MAX)

    async def acquire(self, origin: Origin, fresh: bool = False) -> Connection:
        """A pooled connection to the origin (unless ``fresh``), or a new one; while the
        origin has no place, waits for one in its queue (within connect_timeout)."""
        if not fresh and (connection := self._reuse(origin)) is not None:
            return connection
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                while not self._room_for(origin):
                    if self._open[origin] < self.limit_per_origin and self._close_an_idle_one():
                        continue  # the pool is full, but for an idle connection: it makes way
                    await self._wait_turn(origin, loop)
                    if not fresh and (connection := self._reuse(origin)) is not None:
                        return connection
                self._open[origin] += 1
                self._total += 1
                connection = Connection(self, origin)
                try:
                    await loop.create_connection(
                        lambda: connection, origin.host, origin.port, ssl=origin.tls
                    )
                except BaseException:
                    self.retire(connection)
                    raise
        except TimeoutError:
            raise UpstreamTimeout(
                f"no connection to {origin.host}:{origin.port} in {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:  # ssl.SSLError included: a certificate that does not verify
            raise UpstreamConnectError(
                f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from None
        self._busy.add(connection)
        return connection

    def release(self, connection: Connection) -> None:
        """Back to the pool if it can carry another exchange; else closed."""
        self.untrack(connection)
        self._busy.discard(connection)
        if connection.reusable():
            loop = asyncio.get_running_loop()
            connection.idle_since = loop.time()
            self._idle.setdefault(connection.origin, collections.deque()).append(connection)
            if self._reaper is None:
                self._reaper = loop.call_later(self.keepalive_timeout, self._reap)
            if self._waiters:
                self._wake(connection.origin)
        else:
            connection.close()
            self.retire(connection)

    def retire(self, connection: Connection) -> None:
        """A connection closed, by either side: its place in the pool is free."""
        if not connection.counted:
            return
        connection.counted = False
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        self._open[connection.origin] -= 1
        self._total -= 1
        if self._waiters:
            self._wake(connection.origin)

    def track(self, connection: Connection) -> None:
        """Time the connection's waits on its portal until release."""
        self._tracked[connection] = None
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._tick, self._sweep)

    def untrack(self, connection: Connection) -> None:
        self._tracked.pop(connection, None)

    async def close(self) -> None:
        for connection in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            connection.close()
            self.retire(connection)
        self._busy.clear()
        self._idle.clear()
        for timer in (self._sweeper, self._reaper):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._reaper = None

    def _reuse(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        expired = asyncio.get_running_loop().time() - self.keepalive_timeout
        while idle:
            connection = idle.pop()
            if connection.closed or connection.idle_since < expired:
                connection.close()
                self.retire(connection)
                continue
            self._busy.add(connection)
            return connection
        return None

    async def _wait_turn(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        """Wait in the origin's queue until a place or an idle connection may be there."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(origin, collections.deque()).append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake(origin)  # woken, but leaving (timed out): the turn goes on
            raise

    def _wake(self, origin: Origin) -> None:
        """A place or an idle connection came free at ``origin``: the first in its queue goes
        on; if none waits there, the first for another origin that has room of its own."""
        if self._wake_first(origin):
            return
        for other in list(self._waiters):
            if self._open[other] < self.limit_per_origin and self._wake_first(other):
                return

    def _wake_first(self, origin: Origin) -> bool:
        queue = self._waiters.get(origin)
        if queue is None:
            return False
        woken = False
        while queue and not woken:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                woken = True
        if not queue:
            del self._waiters[origin]
        return woken

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [c for c in self._tracked if c.overdue(now)]:
            self.untrack(connection)
            connection.time_out()
        self._sweeper = loop.call_later(self._tick, self._sweep) if self._tracked else None

    def _reap(self) -> None:
        """Close the connections idle for keepalive_timeout, before the portal closes them."""
        loop = asyncio.get_running_loop()
        expired = loop.time() - self.keepalive_timeout
        oldest: float | None = None
        for idle in self._idle.values():
            while idle and idle[0].idle_since <= expired:
                connection = idle.popleft()
                connection.close()
                self.retire(connection)
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        self._reaper = (
            None if oldest is None else loop.call_at(oldest + self.keepalive_timeout, self._reap)
        )

    def _room_for(self, origin: Origin) -> bool:
        return self._total < self.limit and self._open[origin] < self.limit_per_origin

    def _close_an_idle_one(self) -> bool:
        """Make room by closing the longest idle connection, if there is one."""
        for idle in self._idle.values():
            if idle:
                connection = idle.popleft()
                connection.close()
                self.retire(connection)
                return True
        return False
