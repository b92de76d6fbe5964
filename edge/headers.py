"""Which headers cross the proxy, each way, and who the client is behind trusted proxies.

Works on the ASGI header list (lowercase names, bytes) with set look-ups, no regex.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from edge.policy import METHOD_OVERRIDE_HEADERS

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Set by the proxy itself after filtering, whoever the client is.
_OWN = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"})
# Expect is answered by our own server; the backend gets the body without waiting.
_DROP_TRUSTED = HOP_BY_HOP | _OWN | {b"expect"} | {h.encode() for h in METHOD_OVERRIDE_HEADERS}
_DROP_UNTRUSTED = _DROP_TRUSTED | {b"forwarded", b"x-real-ip"}
_PREFIXES_TRUSTED = (b"x-edge-",)
_PREFIXES_UNTRUSTED = (b"x-edge-", b"x-forwarded-")
_NEVER_NAMED = frozenset({b"close", b"host", b""}) | HOP_BY_HOP
_DROP_RESPONSE = HOP_BY_HOP | {b"x-request-id"}
_MAX_REQUEST_ID = 200
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


class ClientView(NamedTuple):
    """The client as the proxy presents it to backends and logs."""

    client_ip: str
    proto: str
    host: str
    request_id: str
    trusted: bool = False  # the peer is a trusted proxy


def trust_checker(cidrs: Sequence[str]) -> Callable[[str], bool]:
    """``ip -> is it inside one of cidrs``, memoised per address."""
    networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
    if not networks:
        return lambda ip: False

    @lru_cache(maxsize=4096)
    def trusted(ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in networks)

    return trusted


def client_view(scope: Mapping[str, Any], trusted: Callable[[str], bool]) -> ClientView:
    client = scope.get("client")
    peer: str = client[0] if client else ""
    host = b""
    if not trusted(peer):
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
                break
        return ClientView(peer, scope["scheme"], host.decode("latin-1"), new_request_id())

    forwarded_for: list[bytes] = []
    proto = forwarded_host = request_id = b""
    for name, value in scope["headers"]:
        if name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            forwarded_for.append(value)
        elif name == b"x-forwarded-proto":
            proto = value
        elif name == b"x-forwarded-host":
            forwarded_host = value
        elif name == b"x-request-id":
            request_id = value.strip()
    forwarded_proto = _last(proto).lower()
    return ClientView(
        _original_client(forwarded_for, peer, trusted),
        forwarded_proto if forwarded_proto in ("http", "https") else scope["scheme"],
        _last(forwarded_host) or host.decode("latin-1"),
        request_id.decode() if _acceptable_id(request_id) else new_request_id(),
        trusted=True,
    )


def _acceptable_id(value: bytes) -> bool:
    return 0 < len(value) <= _MAX_REQUEST_ID and value.isascii()


def new_request_id() -> str:
    """A random UUID4 as 32 hex digits: uuid.uuid4().hex at half the cost."""
    return f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"


def _last(value: bytes) -> str:
    """The entry the nearest proxy added to a comma-separated forwarding header."""
    return value.rpartition(b",")[2].strip().decode("latin-1")


def _original_client(forwarded_for: list[bytes], peer: str, trusted: Callable[[str], bool]) -> str:
    """As uvicorn's proxy_headers: the nearest address that is not itself a trusted proxy."""
    hops = [hop.strip().decode("latin-1") for value in forwarded_for for hop in value.split(b",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer


def upstream_headers(
    headers: Iterable[Header], view: ClientView, peer: str, extra: Iterable[Header]
) -> tuple[list[tuple[str, str]], bool]:
    """The request headers for the backend, and whether the request has a body.

    Values are handed to aiohttp as str and it writes them as UTF-8, so they are decoded as
    UTF-8 (byte-exact); only a value that is not UTF-8 falls back to Latin-1.
    """
    drop, prefixes = (
        (_DROP_TRUSTED, _PREFIXES_TRUSTED)
        if view.trusted
        else (_DROP_UNTRUSTED, _PREFIXES_UNTRUSTED)
    )
    out: list[tuple[str, str]] = []
    named: set[bytes] | None = None
    forwarded_for: list[str] = []
    has_body = chunked = False
    for name, value in headers:
        if name in drop or name.startswith(prefixes):
            if name == b"connection":
                named = _connection_tokens(value, named)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"x-forwarded-for" and view.trusted:
                forwarded_for.append(value.decode("latin-1"))
            continue
        if name == b"content-length" and value != b"0":
            has_body = True
        try:
            text = value.decode()
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        out.append((name.decode("latin-1"), text))
    if chunked:
        has_body = True
        named = (named or set()) | {b"content-length"}
    if named:
        names = {name.decode("latin-1") for name in named}
        out = [header for header in out if header[0] not in names]
    if peer:
        forwarded_for.append(peer)
    if forwarded_for:
        out.append(("x-forwarded-for", ", ".join(forwarded_for)))
    out.append(("x-forwarded-proto", view.proto))
    if view.host:
        out.append(("x-forwarded-host", view.host))
    out.append(("x-request-id", view.request_id))
    out.extend((name.decode("latin-1"), value.decode("latin-1")) for name, value in extra)
    return out, has_body


def downstream_headers(raw: Iterable[Header], status: int, request_id: bytes) -> list[Header]:
    """The backend's response headers for the client: raw bytes, every Set-Cookie kept."""
    out: list[Header] = []
    named: set[bytes] | None = None
    for name, value in raw:
        lower = name.lower()
        if lower in _DROP_RESPONSE:
            if lower == b"connection":
                named = _connection_tokens(value, named)
            continue
        out.append((lower, value))
    if status < 200 or status in (204, 304):
        # uvicorn would insist on sending the announced length for a body-less status.
        named = (named or set()) | {b"content-length"}
    if named:
        out = [header for header in out if header[0] not in named]
    out.append((b"x-request-id", request_id))
    return out


def _connection_tokens(value: bytes, named: set[bytes] | None) -> set[bytes] | None:
    """Header names listed in a Connection header that are not already dropped anyway."""
    tokens = {token.strip().lower() for token in value.split(b",")} - _NEVER_NAMED
    if not tokens:
        return named
    return tokens if named is None else named | tokens
