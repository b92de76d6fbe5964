"""WebSocket upgrades: routed like a GET, then relayed message by message to the portal.

The router decides a handshake as it decides a GET. A refusal or a redirect answers the HTTP
handshake itself (through the ASGI "websocket.http.response" extension, else the server's
plain 403). A forward opens the portal's WebSocket first and accepts the client's only once the
portal has accepted, with the subprotocol the portal chose. Then each direction carries one
message at a time: a reader that falls behind holds its sender back through the sockets, and
nothing queues without bound. A close on either side, with its code and reason, closes the
other; a failure on either side closes both.
"""

from __future__ import annotations

import asyncio
import contextlib
from time import perf_counter

import aiohttp
from aiohttp import WSMsgType
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from yarl import URL

from edge.asgi import Message, Receive, Scope, Send
from edge.config import UpstreamSettings, WebSocketSettings
from edge.headers import Backend, ClientView, upstream_headers
from edge.proxy import CLIENT_CLOSED, Outcome, request_target, send_upstream_failure
from edge.responses import send_response
from edge.upstream import Origin

_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

# aiohttp writes the upstream handshake's own.
_HANDSHAKE_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
_NORMAL = 1000
_GOING_AWAY = 1001
_NO_STATUS = 1005
_BAD_GATEWAY = 1014  # the portal's side failed (RFC 6455 registry)
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
    """Relays WebSockets to the portals over a pool of its own, so long-lived connections
    never take the places of ordinary requests in the forwarding pool."""

    def __init__(self, settings: WebSocketSettings, upstream: UpstreamSettings) -> None:
        self._settings = settings
        self._upstream = upstream
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        upstream = self._upstream
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._settings.max_connections),
            # sock_read bounds the wait for the handshake answer; aiohttp lifts it after.
            timeout=upstream_timeout(upstream),
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_NO_AUTO_HEADERS,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        session = self._session
        if session is None:
            raise RuntimeError("WebSocketRelay.start() has not run")
        started = perf_counter()  # loop.time() is uvloop's, in whole milliseconds
        client = scope.get("client")
        raw, _ = upstream_headers(
            scope["headers"],
            view,
            client[0] if client else "",
            extra_headers,
            Origin.of(backend.url).host_header,
            backend.keep_host,
        )
        headers = [(name.decode("latin-1"), _text(value)) for name, value in raw]
        try:
            upstream = await session.ws_connect(
                URL(backend.url + request_target(scope), encoded=True),
                protocols=scope.get("subprotocols", ()),
                headers=[header for header in headers if header[0] not in _HANDSHAKE_HEADERS],
                heartbeat=self._settings.ping_interval,
                max_msg_size=self._settings.max_message_size,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The portal answered, but not with an upgrade: pass a refusal's status on.
            status = exc.status if 400 <= exc.status < 600 else 502
            request_id = [(b"x-request-id", view.request_id.encode("latin-1"))]
            await send_response(send, status, _REFUSED, b"text/plain; charset=utf-8", request_id)
            return Outcome(status, 0, perf_counter() - started, f"handshake refused: {exc.message}")
        except (aiohttp.ClientError, OSError) as exc:
            status = 504 if isinstance(exc, TimeoutError) else 502
            await send_upstream_failure(send, status, view.request_id, scope, extra_headers)
            return Outcome(status, 0, perf_counter() - started, f"{type(exc).__name__}: {exc}")
        link = _Link(upstream, receive, send)
        try:
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": upstream.protocol,
                    "headers": [(b"x-request-id", view.request_id.encode("latin-1"))],
                }
            )
        except OSError:  # uvicorn's ClientDisconnected: the client left during the handshake
            await upstream.close(code=_GOING_AWAY)
            return Outcome(CLIENT_CLOSED, 0, perf_counter() - started, "client disconnected")
        error = await link.run()
        return Outcome(101, link.bytes_out, perf_counter() - started, error)


class _Link:
    """One accepted WebSocket and its portal's: two pumps, and who closed first."""

    def __init__(
        self, upstream: aiohttp.ClientWebSocketResponse[bool], receive: Receive, send: Send
    ) -> None:
        self.upstream = upstream
        self.receive = receive
        self.send = send
        self.client_done = False  # the client closed or left, or was sent a close
        self.bytes_out = 0

    async def run(self) -> str | None:
        """Relay until either side ends; close the other; the failure, if any."""
        pumps = (
            asyncio.ensure_future(self.client_to_upstream()),
            asyncio.ensure_future(self.upstream_to_client()),
        )
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            results = await asyncio.gather(*pumps, return_exceptions=True)
            await self.upstream.close(code=_GOING_AWAY)  # a no-op once closed
            if not self.client_done:
                await self.close_client(_BAD_GATEWAY, "the portal connection failed")
        failures = [r for r in results if isinstance(r, Exception)]
        return f"{type(failures[0]).__name__}: {failures[0]}" if failures else None

    async def client_to_upstream(self) -> None:
        upstream, receive = self.upstream, self.receive
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                text: str | None = message.get("text")
                if text is not None:
                    await upstream.send_str(text)
                else:
                    await upstream.send_bytes(message.get("bytes") or b"")
            elif message["type"] == "websocket.disconnect":
                self.client_done = True
                reason: str = message.get("reason") or ""
                code = _sendable(message.get("code", _NO_STATUS))
                await upstream.close(code=code, message=reason.encode())
                return

    async def upstream_to_client(self) -> None:
        upstream, send = self.upstream, self.send
        while True:
            message = await upstream.receive()
            if message.type is WSMsgType.TEXT:
                self.bytes_out += len(message.data)
                await send({"type": "websocket.send", "text": message.data})
            elif message.type is WSMsgType.BINARY:
                self.bytes_out += len(message.data)
                await send({"type": "websocket.send", "bytes": message.data})
            elif message.type is WSMsgType.CLOSE:
                await self.close_client(message.data, message.extra or "")
                return
            else:  # CLOSED or ERROR: the portal vanished or broke the protocol
                return

    async def close_client(self, code: int, reason: str) -> None:
        self.client_done = True
        with contextlib.suppress(OSError):  # the client is gone already
            await self.send({"type": "websocket.close", "code": code, "reason": reason})


def _sendable(code: int) -> int:
    """A client's close code as the portal may be sent it: 1005 and 1006 only describe."""
    if code == _NO_STATUS:
        return _NORMAL
    if (1000 <= code <= 1014 and code not in (1004, 1006)) or 3000 <= code < 5000:
        return code
    return _GOING_AWAY


def upstream_timeout(upstream: UpstreamSettings) -> aiohttp.ClientTimeout:
    """Connect within connect_timeout; the handshake's answer within read_timeout."""
    return aiohttp.ClientTimeout(
        total=None,
        connect=upstream.connect_timeout,
        sock_connect=upstream.connect_timeout,
        sock_read=upstream.read_timeout,
    )


def _text(value: bytes) -> str:
    """aiohttp writes header values as UTF-8: decoded so, they go out byte-exact (a value that
    is not UTF-8 falls back to Latin-1)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")
