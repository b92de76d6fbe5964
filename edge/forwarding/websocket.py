"""WebSocket upgrades: routed like a GET, then relayed message by message to the portal.

The router decides a handshake as it decides a GET. A refusal or a redirect answers the HTTP
handshake itself (through the ASGI "websocket.http.response" extension, else the server's
plain 403). A forward opens the portal's WebSocket first, on a connection of its own that
nothing used before, and accepts the client's only once the portal has accepted, with the
subprotocol the portal chose. Then each direction carries one message at a time: a reader that
falls behind holds its sender back through the sockets, and nothing queues without bound. A
close on either side, with its code and reason, closes the other at once; a failure on either
side closes both.

The portal's side is the ``websockets`` client (the library uvicorn's protocol is built on),
driven directly: edge writes the handshake's headers itself and follows no redirect.
"""

from __future__ import annotations

import asyncio
import contextlib
from time import perf_counter

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.http11 import Request
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI

from edge.config import UpstreamSettings, WebSocketSettings
from edge.core.asgi import Message, Receive, Scope, Send
from edge.core.responses import send_response
from edge.forwarding.headers import Backend, ClientView, upstream_headers
from edge.forwarding.proxy import request_target, send_upstream_failure
from edge.forwarding.upstream import Origin
from edge.observe.served import CLIENT_CLOSED, Outcome

# The handshake's own fields: the client's are its handshake with edge, not edge's with the
# portal, which the websockets client writes; and a handshake has no body.
_HANDSHAKE_HEADERS = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
        b"transfer-encoding",
    }
)
_NORMAL = 1000
_GOING_AWAY = 1001
_NO_STATUS = 1005
_BAD_GATEWAY = 1014  # the portal's side failed (RFC 6455 registry)
_MAX_QUEUE = 4  # frames read ahead from the portal before its socket is no longer read
_REFUSED = b"The portal refused the WebSocket.\n"


async def opening(scope: Scope, receive: Receive, send: Send) -> tuple[Scope, Send] | None:
    """Wait for the client's handshake; then the scope to route it as a GET and a send that
    answers refusals and redirects over HTTP. None when the client left first."""
    if (await receive())["type"] != "websocket.connect":
        return None
    routed = {**scope, "method": "GET", "scheme": "https" if scope["scheme"] == "wss" else "http"}
    can_respond = "websocket.http.response" in (scope.get("extensions") or {})
    return routed, _answering_handshake(send, can_respond)


def _answering_handshake(send: Send, can_respond: bool) -> Send:
    """``send`` for a WebSocket scope that also takes the router's http.response messages."""

    async def send_message(message: Message) -> None:
        kind: str = message["type"]
        if kind.startswith("http."):
            if can_respond:
                message = {**message, "type": "websocket." + kind}
            elif kind == "http.response.start":
                message = {"type": "websocket.close"}  # before accept: the server answers 403
            else:
                return
        await send(message)

    return send_message


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, where a handshake refused with an HTTP response
    counts as complete, as it does in uvicorn's wsproto protocol. Without it uvicorn logs
    "ASGI callable returned without completing handshake" at error level for every refusal
    (Kludex/uvicorn#3138, open)."""

    async def send(self, message: Message) -> None:  # type: ignore[override]
        await super().send(message)  # type: ignore[arg-type]
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True


class WebSocketRelay:
    """Relays WebSockets to the portals, each on a new connection of its own, apart from the
    forwarding pool: long-lived sockets never take the places of ordinary requests."""

    def __init__(self, settings: WebSocketSettings, upstream: UpstreamSettings) -> None:
        self._settings = settings
        self._upstream = upstream
        self._places: asyncio.Semaphore | None = None

    async def start(self) -> None:
        self._places = asyncio.Semaphore(self._settings.max_connections)

    async def close(self) -> None:
        self._places = None

    async def relay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        backend: Backend,
        extra_headers: list[tuple[bytes, bytes]],
        view: ClientView,
    ) -> Outcome:
        """Same shape as Forwarder.forward; ``send`` is the one ``opening`` returned."""
        places = self._places
        if places is None:
            raise RuntimeError("WebSocketRelay.start() has not run")
        started = perf_counter()  # loop.time() is uvloop's, in whole milliseconds
        origin = backend.origin
        headers, _ = upstream_headers(scope, view, extra_headers, backend)
        request = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in headers
            if name not in _HANDSHAKE_HEADERS
        ]
        target = origin.path + request_target(scope)
        subprotocols: list[str] = scope.get("subprotocols", [])
        upstream = self._upstream
        try:
            async with asyncio.timeout(upstream.connect_timeout):
                await places.acquire()
        except TimeoutError:
            await send_upstream_failure(send, 504, view.request_id, scope, extra_headers)
            return Outcome(504, 0, perf_counter() - started, "no WebSocket place left in time")
        try:
            try:
                portal = await self._open(origin, target, request, subprotocols)
            except (WebSocketException, OSError) as exc:  # TimeoutError is an OSError
                status, error = await _not_opened(exc, send, view.request_id, scope, extra_headers)
                return Outcome(status, 0, perf_counter() - started, error)
            link = _Link(portal, receive, send)
            try:
                await send(
                    {
                        "type": "websocket.accept",
                        "subprotocol": portal.subprotocol,
                        "headers": [(b"x-request-id", view.request_id.encode("latin-1"))],
                    }
                )
            except OSError:  # uvicorn's ClientDisconnected: the client left during the handshake
                await portal.close(_GOING_AWAY)
                return Outcome(CLIENT_CLOSED, 0, perf_counter() - started, "client disconnected")
            failure = await link.run()
            return Outcome(101, link.bytes_out, perf_counter() - started, failure)
        finally:
            places.release()

    async def _open(
        self, origin: Origin, target: str, headers: list[tuple[str, str]], subprotocols: list[str]
    ) -> ClientConnection:
        """The portal's WebSocket, on a new connection: connected (TLS included) within
        connect_timeout, its handshake answered within read_timeout."""
        settings, upstream = self._settings, self._upstream
        path, _, query = target.partition("?")
        uri = WebSocketURI(origin.tls is not None, origin.host, origin.port, path, query)
        handshake = _Handshake(
            uri,
            headers,
            subprotocols=[Subprotocol(name) for name in subprotocols] or None,
            max_size=settings.max_message_size,
        )
        portal = _PortalSocket(
            handshake,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_interval,
            close_timeout=upstream.read_timeout,
            max_queue=_MAX_QUEUE,
        )
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(upstream.connect_timeout):
            await loop.create_connection(lambda: portal, origin.host, origin.port, ssl=origin.tls)
        try:
            async with asyncio.timeout(upstream.read_timeout):
                await portal.handshake(None, None)
        except BaseException:
            portal.transport.abort()
            raise
        portal.start_keepalive()
        return portal


async def _not_opened(
    exc: Exception,
    send: Send,
    request_id: str,
    scope: Scope,
    edge_headers: list[tuple[bytes, bytes]],
) -> tuple[int, str]:
    """Answer a handshake the portal did not accept: its refusal's status passed on, or edge's
    own 502 or 504; the status and what happened."""
    if isinstance(exc, InvalidStatus) and 400 <= (status := exc.response.status_code) < 600:
        headers = [(b"x-request-id", request_id.encode("latin-1"))]
        await send_response(send, status, _REFUSED, b"text/plain; charset=utf-8", headers)
        return status, f"handshake refused: {status}"
    status = 504 if isinstance(exc, TimeoutError) else 502
    await send_upstream_failure(send, status, request_id, scope, edge_headers)
    return status, f"{type(exc).__name__}: {exc}"


class _Handshake(ClientProtocol):
    """The client side of the portal's WebSocket, whose handshake request carries edge's
    headers (the Host edge decided among them) beside the WebSocket's own fields."""

    def __init__(
        self,
        uri: WebSocketURI,
        headers: list[tuple[str, str]],
        subprotocols: list[Subprotocol] | None,
        max_size: int,
    ) -> None:
        super().__init__(uri, subprotocols=subprotocols, max_size=max_size)
        self._headers = headers

    def connect(self) -> Request:
        request = super().connect()
        own = [(name, value) for name, value in request.headers.raw_items() if name != "Host"]
        request.headers = Headers([*self._headers, *own])
        return request


class _PortalSocket(ClientConnection):
    """The portal's WebSocket. Once the portal's side is done (its handshake answer refused,
    its close frame in and answered, or the protocol broken), edge closes the TCP connection
    itself, so that the client hears of it now: websockets would wait for the portal to close
    it, and keeps its close timeout only when it next writes (a keepalive ping)."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        protocol = self.protocol
        done = protocol.state is State.CLOSING or protocol.handshake_exc is not None
        if done and not self.transport.is_closing():
            self.transport.close()


class _Link:
    """One accepted WebSocket and its portal's: two pumps, and who closed first."""

    def __init__(self, portal: ClientConnection, receive: Receive, send: Send) -> None:
        self.portal = portal
        self.receive = receive
        self.send = send
        self.client_done = False  # the client closed or left, or was sent a close
        self.bytes_out = 0

    async def run(self) -> str | None:
        """Relay until either side ends; close the other; the failure, if any."""
        pumps = (
            asyncio.ensure_future(self.client_to_portal()),
            asyncio.ensure_future(self.portal_to_client()),
        )
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            results = await asyncio.gather(*pumps, return_exceptions=True)
            await self.portal.close(_GOING_AWAY)  # a no-op once closed
            if not self.client_done:
                closed = self.portal.protocol.close_rcvd
                if closed is not None:  # the portal's close, code and reason, as it may be sent
                    await self.close_client(_sendable(closed.code), closed.reason)
                else:
                    await self.close_client(_BAD_GATEWAY, "the portal connection failed")
        failures = [r for r in results if isinstance(r, Exception)]
        return f"{type(failures[0]).__name__}: {failures[0]}" if failures else None

    async def client_to_portal(self) -> None:
        portal, receive = self.portal, self.receive
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                text: str | None = message.get("text")
                try:
                    await portal.send(text if text is not None else message.get("bytes") or b"")
                except ConnectionClosed:
                    return  # the portal is gone: run() closes the client as it says
            elif message["type"] == "websocket.disconnect":
                self.client_done = True
                reason: str = message.get("reason") or ""
                await portal.close(_sendable(message.get("code", _NO_STATUS)), reason)
                return

    async def portal_to_client(self) -> None:
        portal, send = self.portal, self.send
        while True:
            try:
                data = await portal.recv()
            except ConnectionClosed as closed:
                if closed.rcvd is None:  # no close frame: the portal vanished or broke the rules
                    raise
                return
            self.bytes_out += len(data)
            if isinstance(data, str):
                await send({"type": "websocket.send", "text": data})
            else:
                await send({"type": "websocket.send", "bytes": data})

    async def close_client(self, code: int, reason: str) -> None:
        self.client_done = True
        with contextlib.suppress(OSError):  # the client is gone already
            await self.send({"type": "websocket.close", "code": code, "reason": reason})


def _sendable(code: int) -> int:
    """A close code as the other side may be sent it: 1005 (no code given) is a normal
    closure, and a code that only describes a closure (1006, 1015) or is reserved goes as 1001."""
    if code == _NO_STATUS:
        return _NORMAL
    if (1000 <= code <= 1014 and code not in (1004, 1006)) or 3000 <= code < 5000:
        return code
    return _GOING_AWAY
