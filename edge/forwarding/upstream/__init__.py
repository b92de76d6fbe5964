"""The forwarding leg's HTTP/1.1 client: keep-alive connections to the portals, pooled.

aiohttp's ClientSession spent most of a forwarded request's CPU on per-request machinery a
proxy does not use (sessions, cookies, redirects, middlewares, URL objects, timers): a raw
ASGI app forwarding through it served 12,900 req/s on the bench's machine, the same app with
this leg 33,500. What is left is what a proxy needs: httptools (the parser uvicorn
uses) reads the answers, bodies stream both ways under flow control, and one timer per pool,
not per read, enforces the timeouts.
"""

from edge.forwarding.upstream.connection import Connection
from edge.forwarding.upstream.errors import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from edge.forwarding.upstream.origin import Header, Origin, request_head
from edge.forwarding.upstream.pool import UpstreamPool

__all__ = [
    "Connection",
    "Header",
    "Origin",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "request_head",
]
