"""The public listener's HTTP/1.1 protocol: uvicorn's httptools protocol, bounded.

Size: neither llhttp nor uvicorn limits a request line or a header section: both are buffered
until they end, however long that takes. Here a request target over the limit gets 414, a
header section over it gets 431, and the connection is closed before the app sees the request.
A target over the limit is dropped, not kept, and its head read on (bounded as any head) so
that the 414 can follow the request's Accept as edge's other refusals do (edge.core.responses).

Time and count (docs/limits.md): a head must arrive whole within ``header_timeout``, a body may
not stall longer than ``body_idle_timeout``, a client may leave its response unread no longer
than ``send_timeout`` (edge.serving.clients keeps the deadlines), idle keep-alive is uvicorn's own
timer set to ``keepalive_timeout``, and beyond ``max_connections`` a new connection is answered
503 at once.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edge.core.asgi import BODY_STALLED, Scope
from edge.core.responses import asks_for_json, refusal
from edge.serving.clients import STATS, ClientConnections, ClientLimits, of_server

# Reads are at most this long (uvloop and asyncio both read 256 KiB at a time). A head still
# open is measured in whole reads, so the first may also hold the end of the request before.
_READ_MAX = 256 * 1024
# A connection turned away stays open this long (at most this many at once) to read what the
# client sends, so that closing it with that unread does not reset the 503 away.
_LINGER = 2.0
LINGER_MAX = 64


def protocol(limits: ClientLimits) -> type[asyncio.Protocol]:
    """For uvicorn.Config(http=...): uvicorn calls it as a class; a partial pickles to worker
    processes with the limits in it."""
    return cast("type[asyncio.Protocol]", partial(BoundedHttpToolsProtocol, limits=limits))


class _HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        # uvicorn's own keep-alive timer reads it (typed int there; call_later takes any number).
        self.timeout_keep_alive = cast(int, limits.keepalive_timeout)
        # A head still open past this cannot fit the limits (": " and CRLF are 4 bytes a header,
        # 64 covers the method and version), even counting a whole read before it began.
        self.head_budget = (
            limits.url_bytes + limits.header_bytes + 4 * limits.headers + 64 + _READ_MAX
        )
        self.reading_head = False
        self.head_seen = 0  # bytes of the reads that hold the current head: an upper bound
        self.last_read = 0
        self.refusal = 0  # the status edge answered before closing (414, 431, 408, 503)
        self.target_too_long = False  # the head being read gets 414 once it is in
        self.clients: ClientConnections | None = None  # None: turned away, or a WebSocket now
        self.head_due = False  # the head has a deadline in self.clients
        self.in_body = False  # from a head to the end of its body
        self.body_due = False  # the body has a deadline in self.clients
        self.linger: asyncio.TimerHandle | None = None

    # -- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        clients = of_server(self.server_state, self.limits)
        limits = self.limits
        # Every listener's connections count, but only the public one turns any away: the
        # admin listener's health checks and scrapes still get through a flood.
        if (
            len(self.connections) >= limits.max_connections
            and transport.get_extra_info("sockname")[1] == limits.public_port
        ):
            self.turn_away(transport, clients)
            return
        super().connection_made(transport)
        self.clients = clients
        self.head_due = True  # the first head is due header_timeout after the connection
        clients.head_started(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.clients is not None:
            self.clients.forget(self)
        if self.linger is not None:
            self.linger.cancel()
            of_server(self.server_state, self.limits).lingering -= 1
        super().connection_lost(exc)

    def turn_away(self, transport: asyncio.Transport, clients: ClientConnections) -> None:
        """Beyond max_connections: 503 before the request is read, and close."""
        self.transport = transport
        self.refusal = 503
        STATS.turned_away += 1
        transport.write(_answer(503, ((b"retry-after", b"1"),)))
        if clients.lingering < LINGER_MAX and transport.can_write_eof():
            clients.lingering += 1
            transport.write_eof()
            self.linger = self.loop.call_later(_LINGER, transport.close)
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.refusal:
            return
        self.last_read = len(data)
        if self.reading_head:
            self.head_seen += len(data)
        super().data_received(data)
        if self.refusal or self.clients is None:
            return
        if self.reading_head:
            if self.head_seen > self.head_budget:
                self.refuse(414 if self.target_too_long else 431)
            elif not self.head_due:
                self.head_due = True  # from the first read of a head after the first
                self.clients.head_started(self)
        elif self.in_body:
            self.body_due = True
            self.clients.body_moved(self)

    def handle_websocket_upgrade(self) -> None:
        if self.clients is not None:  # a WebSocket has its own pings and no HTTP deadlines
            self.clients.forget(self)
            self.clients = None
        self.in_body = False
        super().handle_websocket_upgrade()

    # -- llhttp's callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True
        self.target_too_long = False
        self.head_seen = self.last_read

    def on_url(self, url: bytes) -> None:
        if self.target_too_long:
            return
        self.url += url
        if len(self.url) > self.limits.url_bytes:
            self.target_too_long = True
            self.url = b""

    def on_headers_complete(self) -> None:
        self.reading_head = False
        if self.head_due:
            self.head_due = False
            cast(ClientConnections, self.clients).head_done(self)
        if self.target_too_long:
            self.refusal = 414
            raise _HeadTooLarge
        limits = self.limits
        headers = self.headers
        if len(headers) > limits.headers or (
            self.head_seen > limits.header_bytes
            and sum(len(name) + len(value) for name, value in headers) > limits.header_bytes
        ):
            self.refusal = 431
            raise _HeadTooLarge
        self.in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_body = False
        if self.body_due:
            self.body_due = False
            cast(ClientConnections, self.clients).body_done(self)
        HttpToolsProtocol.on_message_complete(self)  # every request: no super() object

    # -- deadlines (serving.clients) --------------------------------------------------------------

    def head_overdue(self) -> None:
        cycle = self.cycle
        if self.transport.is_closing():
            return
        if cycle is not None and not cycle.response_complete:
            # A head pipelined behind a request still being answered: it gets its time again.
            cast(ClientConnections, self.clients).head_started(self)
            return
        self.head_due = False
        STATS.header_timeouts += 1
        if self.reading_head:
            self.refuse(408)
        else:  # not a byte of a request: nothing to answer
            self.transport.close()

    def body_overdue(self) -> None:
        self.body_due = False
        cycle = self.cycle
        if self.transport.is_closing():
            return
        STATS.body_timeouts += 1
        # The app's receive() now says the client is gone, and its sends go nowhere: the
        # forwarder drops the portal's connection instead of finishing the exchange on it.
        cast(Scope, cycle.scope)[BODY_STALLED] = True
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
        else:
            self.refuse(408)

    def send_overdue(self) -> None:
        STATS.send_timeouts += 1
        # close() would wait for the client to read what is queued: it never will. The app's
        # sends return at once from now on, and the forwarder lets the portal go.
        self.transport.abort()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.clients is not None:
            self.clients.send_stalled(self)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.clients is not None:
            self.clients.send_moved(self)

    def client_turn(self) -> bool:
        return not self.flow.read_paused and not self.cycle.waiting_for_100_continue

    # -- answers of edge's own -----------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to any parser error, ours included: a callback raised to stop llhttp.
        if self.refusal:
            self.refuse(self.refusal)
        else:
            super().send_400_response(msg)

    def refuse(self, status: int) -> None:
        self.refusal = status
        # The headers of the head read so far (all of them but for a head cut off unfinished).
        self.transport.write(_answer(status, as_json=asks_for_json(self.headers or ())))
        self.transport.close()


def _answer(
    status: int, headers: tuple[tuple[bytes, bytes], ...] = (), *, as_json: bool = False
) -> bytes:
    """edge's refusal page (JSON on request), before any tenant is known; then close."""
    body, content_type = refusal(status, _MESSAGES[status], tenant=None, mode=None, as_json=as_json)
    extra = b"".join(b"%s: %s\r\n" % header for header in headers)
    return (
        b"%scontent-type: %s\r\ncontent-length: %d\r\ncache-control: no-store\r\n%b"
        b"connection: close\r\n\r\n%s" % (STATUS_LINE[status], content_type, len(body), extra, body)
    )


_MESSAGES = {
    408: "The request did not arrive in time.",
    414: "The address (URL) is longer than this server accepts.",
    431: "The request headers are larger than this server accepts.",
    503: "This server has all the connections it can take. Please try again in a moment.",
}
