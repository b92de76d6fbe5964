"""One keep-alive connection to a portal: the exchange (a request out, its answer in, under
flow control both ways) and the question whether it may carry the next one."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import httptools

from edge.forwarding.upstream.errors import (
    UpstreamDisconnected,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from edge.forwarding.upstream.origin import Header, Origin
from edge.forwarding.upstream.sections import BoundedSections

if TYPE_CHECKING:
    from edge.forwarding.upstream.pool import UpstreamPool

_HIGH_WATER = 2**17  # buffered body bytes at which the backend's connection stops being read
# Body pieces shorter than this are held joined: one object per two-byte chunk would cost
# 25 times the chunk's bytes, and a read's worth of them come in before reading can stop.
_SMALL_PIECE = 512


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


class Connection(BoundedSections):
    """One keep-alive connection to a portal, carrying one exchange at a time.

    It carries the next exchange only if the last one ended exactly as framed both ways (see
    ``reusable``); anything else closes it. What it reads goes through ``BoundedSections``.
    """

    # Slots (and BoundedSections'): past 30 attributes a __dict__ loses fast attribute access.
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
        "_has_length",
        "_head_done",
        "_head_only",
        "_interim",
        "_keep_alive",
        "_loop",
        "_parser",
        "_pending_head",
        "_reading_paused",
        "_request_sent",
        "_timeout",
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
