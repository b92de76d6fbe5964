"""Where a portal's requests go, and the request head edge writes there."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

Header = tuple[bytes, bytes]


class Origin(NamedTuple):
    """Where a portal URL's requests go: host, port, TLS, its Host header and path prefix.

    Connections are pooled per origin: two fronts with the same URL but other TLS settings (a
    client certificate of their own) never share one. A tuple, so that the pool's two look-ups
    a request hash it in C.
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
