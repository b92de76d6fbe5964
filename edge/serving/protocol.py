"""The public listener's HTTP/1.1 protocol: uvicorn's httptools protocol, bounded.

Size: neither llhttp nor uvicorn limits a request line or a header section: both are buffered
until they end, however long that takes. Here a request target over the limit gets 414, a
header section over it gets 431, and the connection is closed before the app sees the request.
A target over the limit is dropped, not kept, and its head read on (bounded as any head) so
that the 414 can follow the request's Accept as edge's other refusals do (edge.core.responses).
On the admin listener every such refusal, and a request llhttp cannot parse, is the admin API's
JSON error (``{"error": "..."}``), as the API's own are.

Time and count (docs/limits.md): a head must arrive whole within ``header_timeout``, a body may
not stall longer than ``body_idle_timeout``, a client may leave its response unread no longer
than ``send_timeout`` (edge.serving.clients keeps the deadlines), idle keep-alive is uvicorn's own
timer set to ``keepalive_timeout``, and beyond ``max_connections`` a new connection is answered
503 at once.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edge.core.asgi import BODY_STALLED, Scope
from edge.core.responses import asks_for_json, refusal
from edge.serving.clients import STATS, ClientConnections, ClientLimits, of_server

# Reads are at most this long (uvloop and asyncio both read 256 KiB at a time). A head still
# open is measured in whole reads, so the first may also hold the end of the request before.
_READ_MAX = 256 * 1024
# Requests parsed ahead of their answers, waiting on a connection: each holds its scope and
# cycle (some 2.3 KiB). Beyond it, what the client sent waits unparsed, and reading pauses,
# until one is answered. A read is parsed a slice at a time so that one read (of thousands
# of tiny requests) adds at most a slice's worth beyond it.
PIPELINE_MAX = 16
_SLICE = 1024
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


class _Ambiguous(Exception):
    """A head that could be read two ways: refused (400) before the app sees it."""


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
        self.on_admin = False  # a connection to the admin listener
        self.target_too_long = False  # the head being read gets 414 once it is in
        self.clients: ClientConnections | None = None  # None: turned away, or a WebSocket now
        self.head_due = False  # the head has a deadline in self.clients
        self.in_body = False  # from a head to the end of its body
        self.body_due = False  # the body has a deadline in self.clients
        self.linger: asyncio.TimerHandle | None = None
        self.stopped = False  # no more HTTP is read (an Upgrade): what came is answered, then close
        self.held = b""  # read but not parsed while PIPELINE_MAX requests wait
        self.trailing = False  # after a chunk header, until its data shows it was not the last
        self.trailer_seen = 0  # bytes of the reads since then: an upper bound, as head_seen
        self.trailers = 0  # fields of the trailer section, as the head's are counted
        self.trailer_bytes = 0

    # -- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        clients = of_server(self.server_state, self.limits)
        limits = self.limits
        sockname = transport.get_extra_info("sockname")
        port = sockname[1] if isinstance(sockname, tuple) else None  # a Unix socket has none
        # Every listener's connections count, but only the public one turns any away: the
        # admin listener's health checks and scrapes still get through a flood.
        if len(self.connections) >= limits.max_connections and port == limits.public_port:
            self.turn_away(transport, clients)
            return
        self.on_admin = port == limits.admin_port
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
        if self.refusal or self.stopped:
            return
        if self.held:
            self.held += data  # reading is paused: this was already on its way
            return
        self.last_read = len(data)
        if self.reading_head:
            self.head_seen += len(data)
        elif self.trailing:
            self.trailer_seen += len(data)
        self.parse(data)

    def parse(self, data: bytes) -> None:
        """Parse ``data``, counted toward the limits already, and see where the request is."""
        if len(data) <= _SLICE:  # most reads: no slicing, and one call fewer
            HttpToolsProtocol.data_received(self, data)
        else:
            self.feed(data)
        if self.refusal or self.clients is None:
            return
        if self.trailing and self.trailer_seen > self.head_budget:
            self.refuse(431)  # a trailer line without end: llhttp would buffer it all
        elif self.reading_head:
            if self.head_seen > self.head_budget:
                self.refuse(414 if self.target_too_long else 431)
            elif not self.head_due:
                self.head_due = True  # from the first read of a head after the first
                self.clients.head_started(self)
        elif self.in_body:
            self.body_due = True
            self.clients.body_moved(self)

    def feed(self, data: bytes) -> None:
        """Parse a read longer than a slice, a slice at a time (PIPELINE_MAX)."""
        for start in range(0, len(data), _SLICE):
            if self.refusal or self.stopped or self.transport.is_closing():
                return
            if len(self.pipeline) >= PIPELINE_MAX:
                self.held = data[start:]
                self.flow.pause_reading()
                return
            HttpToolsProtocol.data_received(self, data[start : start + _SLICE])

    def on_response_complete(self) -> None:
        # It starts the next request waiting and resumes reading. (Every request: no super().)
        HttpToolsProtocol.on_response_complete(self)
        if self.held and not self.transport.is_closing():
            held, self.held = self.held, b""
            self.parse(held)
            if self.held:
                self.flow.pause_reading()

    def handle_websocket_upgrade(self) -> None:
        if self.clients is not None:  # a WebSocket has its own pings and no HTTP deadlines
            self.clients.forget(self)
            self.clients = None
        self.in_body = False
        self.stopped = True  # the connection is the WebSocket's now
        super().handle_websocket_upgrade()

    # -- llhttp's callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self.reading_head = True
        self.target_too_long = False
        self.head_seen = self.last_read
        self.trailers = self.trailer_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.reading_head:
            HttpToolsProtocol.on_header(self, name, value)  # every header: no super() object
            return
        # A trailer: never a header of the request edge judged (RFC 9110 6.5.1), and bounded as
        # the head is, for uvicorn would add it to the request's headers whatever its size.
        self.trailers += 1
        self.trailer_bytes += len(name) + len(value)
        if self.trailers > self.limits.headers or self.trailer_bytes > self.limits.header_bytes:
            self.refusal = 431
            raise _HeadTooLarge

    def on_chunk_header(self) -> None:
        # Its data follows, or, after the last chunk, the trailer section.
        self.trailing = True
        self.trailer_seen = self.last_read

    def on_body(self, body: bytes) -> None:
        self.trailing = False
        HttpToolsProtocol.on_body(self, body)

    def on_chunk_complete(self) -> None:
        self.trailing = False

    def on_url(self, url: bytes) -> None:
        if self.target_too_long:
            return
        self.url += url
        if len(self.url) > self.limits.url_bytes:
            self.target_too_long = True
            self.url = b""

    def on_headers_complete(self) -> None:
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
        if self.url[:1] != b"/" and _names_another_host(self.url, headers):
            self.refusal = 400
            raise _Ambiguous
        self.reading_head = False  # only now: a head refused above is still this request's
        if self.parser.should_upgrade() and not self._should_upgrade():
            # llhttp hands the connection to the protocol named in Upgrade after this head,
            # and uvicorn does not switch to it: a body would be read as the next request (a
            # proxy in front reads it as this one's body), and the rest of this read is lost.
            if _has_body(headers):
                self.refusal = 400
                raise _Ambiguous
            super().on_headers_complete()
            self.cycle.keep_alive = False  # what follows it is not read as HTTP: close after it
            self.stopped = True
            return
        HttpToolsProtocol.on_headers_complete(self)
        self.in_body = True  # after: a head uvicorn refuses (its URL) has no body of its own

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
        if self.refusal or self.in_body:
            self.refuse(self.refusal or 400)
        elif self.on_admin:
            self.refuse(400, msg)
        else:
            STATS.refused[400] += 1
            super().send_400_response(msg)

    def refuse(self, status: int, message: str = "") -> None:
        self.refusal = status
        if status in STATS.refused:
            STATS.refused[status] += 1
        if not (self.in_body and self.cycle.response_started):
            # The headers of the head read so far (all of them but for a head cut off unfinished).
            head = (self.reading_head or self.in_body) and self.parser.get_method() == b"HEAD"
            as_json = asks_for_json(self.headers or ())
            page = _answer(status, as_json=as_json, head=head, admin=self.on_admin, message=message)
            self.transport.write(page)
        # else an answer has begun (the portal answered before the body's end): it is cut short
        self.transport.close()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip(b"0"))
        for name, value in headers
    )


def _names_another_host(target: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an absolute-form target ("http://host/path", RFC 9112 3.2.2: its host wins
    over Host) names another host than the Host header edge routes by. The default port
    may be written or not; userinfo is never part of an http(s) authority."""
    scheme, _, rest = target.partition(b"://")
    default = {b"http": b":80", b"https": b":443"}.get(scheme.lower())
    authority = rest.partition(b"/")[0].partition(b"?")[0].lower()
    hosts = [value.strip(b" \t").lower() for name, value in headers if name == b"host"]
    if default is None or len(hosts) != 1:
        return True
    return authority.removesuffix(default) != hosts[0].removesuffix(default)


def _answer(
    status: int,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    *,
    as_json: bool = False,
    head: bool = False,
    admin: bool = False,
    message: str = "",
) -> bytes:
    """edge's refusal page (JSON on request), before any tenant is known, or on the admin
    listener its JSON error; then close. The answer to a HEAD has the page's length and no
    page."""
    message = message or _MESSAGES[status]
    if admin:
        body, content_type = json.dumps({"error": message}).encode(), b"application/json"
    else:
        body, content_type = refusal(status, message, tenant=None, mode=None, as_json=as_json)
    extra = b"".join(b"%s: %s\r\n" % header for header in headers)
    return (
        b"%scontent-type: %s\r\ncontent-length: %d\r\ncache-control: no-store\r\n%b"
        b"connection: close\r\n\r\n%s"
        % (STATUS_LINE[status], content_type, len(body), extra, b"" if head else body)
    )


_MESSAGES = {
    400: "The request could be read more than one way.",
    408: "The request did not arrive in time.",
    414: "The address (URL) is longer than this server accepts.",
    431: "The request headers are larger than this server accepts.",
    503: "This server has all the connections it can take. Please try again in a moment.",
}
