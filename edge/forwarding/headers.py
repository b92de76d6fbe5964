"""Which headers cross the proxy, each way, and who the client is behind trusted proxies.

Works on the ASGI header list (lowercase names, bytes) with set look-ups, no regex.

Forwarding headers from a trusted proxy: X-Forwarded-For/-Proto/-Host are believed, and a
Forwarded header (RFC 7239) only when there is no X-Forwarded-For (a proxy that speaks only
RFC 7239). Both chains are passed on, each with the peer that connected to edge appended, so
they stay consistent. From anyone else both kinds are dropped and X-Forwarded-* rebuilt.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from edge.config import FrontSettings
from edge.core.asgi import Scope
from edge.core.http import METHOD_OVERRIDE_HEADERS
from edge.forwarding.upstream import Origin

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
# Headers a backend may take for the request's path instead of its request line (IIS and
# ISAPI_Rewrite, Symfony before 3.4, proxies' notes of a rewrite): never forwarded, from
# anyone. The portal routes on the path edge decided; nothing says otherwise.
PATH_OVERRIDE_HEADERS = frozenset(
    {
        b"x-original-url",
        b"x-rewrite-url",
        b"x-override-url",
        b"x-original-uri",
        b"x-original-path",
        b"x-forwarded-uri",
        b"x-forwarded-path",
        b"x-envoy-original-path",
    }
)
# What a client's Connection header may not name: framing, Host and the headers edge sets.
# Honoured, the nomination would strip the body's framing or edge's own word.
UNNAMEABLE = _OWN | {b"content-length", b"transfer-encoding", b"host", b"forwarded", b"x-real-ip"}
_UNNAMEABLE_PREFIXES = (b"x-edge-", b"x-forwarded-")
# The usual Connection values, which name no header.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})
# Expect is answered by our own server; the backend gets the body without waiting. The body's
# framing is edge's own, written after the headers that cross.
_DROP_TRUSTED = (
    HOP_BY_HOP
    | _OWN
    | PATH_OVERRIDE_HEADERS
    | {b"expect", b"forwarded", b"content-length"}
    | {h.encode() for h in METHOD_OVERRIDE_HEADERS}
)
_DROP_UNTRUSTED = _DROP_TRUSTED | {b"x-real-ip"}
# By whether the client is a trusted proxy, and whether the backend gets the client's Host.
_DROP = {
    (trusted, keep_host): (_DROP_TRUSTED if trusted else _DROP_UNTRUSTED)
    | (frozenset() if keep_host else {b"host"})
    for trusted in (True, False)
    for keep_host in (True, False)
}
_PREFIXES_TRUSTED = (b"x-edge-",)
_PREFIXES_UNTRUSTED = (b"x-edge-", b"x-forwarded-")
_NEVER_NAMED = frozenset({b"close", b"host", b""}) | HOP_BY_HOP
_DROP_RESPONSE = HOP_BY_HOP | {b"x-request-id"}
_OWN_PREFIX = b"x-edge-"  # edge's own names: a portal's never reach a client
_MAX_REQUEST_ID = 200
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


@dataclass(frozen=True, slots=True)
class ResponseRewrite:
    """A backend's response headers as the public host should show them: a Location under the
    backend's own URL points at the public URL, a Set-Cookie's Domain is the public one."""

    backend_prefixes: tuple[bytes, ...]  # lower-case: "http://portal.internal:8000", "//..."
    public_url: bytes | None  # None: Locations are left alone; may hold {tenant}
    cookie_domain: bytes | None  # None: cookies are left alone

    def for_tenant(self, tenant: str) -> ResponseRewrite:
        if self.public_url is None:
            return self
        return replace(self, public_url=self.public_url.replace(b"{tenant}", tenant.encode()))

    def apply(self, headers: list[Header]) -> list[Header]:
        rewritten: list[Header] = []
        for name, value in headers:
            if name == b"location" and self.public_url is not None:
                value = self._location(value, self.public_url)
            elif name == b"set-cookie" and self.cookie_domain is not None:
                value = self._cookie(value, self.cookie_domain)
            rewritten.append((name, value))
        return rewritten

    def _location(self, value: bytes, public_url: bytes) -> bytes:
        for prefix in self.backend_prefixes:
            rest = value[len(prefix) :]
            if value[: len(prefix)].lower() == prefix and rest[:1] in (b"", b"/", b"?", b"#"):
                return public_url + rest
        return value

    @staticmethod
    def _cookie(value: bytes, domain: bytes) -> bytes:
        cookie, *attributes = value.split(b";")
        named = [attribute.partition(b"=")[0].strip().lower() for attribute in attributes]
        if b"domain" not in named:
            return value  # a host-only cookie stays one
        return b";".join(
            [cookie]
            + [
                b" Domain=" + domain if name == b"domain" else attribute
                for name, attribute in zip(named, attributes, strict=True)
            ]
        )


@dataclass(frozen=True, slots=True)
class Backend:
    """A front's portal: where its requests go, and how headers cross on the way."""

    url: str
    keep_host: bool = True  # send the client's Host; else the backend URL's
    rewrite: ResponseRewrite | None = None
    tls: ssl.SSLContext | None = None  # for an https:// portal; None: the system's defaults
    # Whether Locations point at a public URL that names the tenant: for_tenant fills it in.
    per_tenant: bool = field(init=False)
    origin: Origin = field(init=False)  # where the connections go

    def __post_init__(self) -> None:
        public_url = self.rewrite.public_url if self.rewrite else None
        object.__setattr__(self, "per_tenant", bool(public_url and b"{tenant}" in public_url))
        object.__setattr__(self, "origin", Origin.of(self.url, self.tls))

    @classmethod
    def from_settings(cls, front: FrontSettings) -> Backend:
        rewrite = None
        if front.rewrite_location or front.cookie_domain:
            rewrite = ResponseRewrite(
                _url_prefixes(front.backend),
                front.public_url.encode() if front.rewrite_location else None,
                front.cookie_domain.encode() if front.cookie_domain else None,
            )
        return cls(front.backend, front.host_header == "preserve", rewrite, front.ssl_context())

    def for_tenant(self, tenant: str) -> Backend:
        """The same backend, with {tenant} filled into the public URL Locations point at."""
        if not self.per_tenant or self.rewrite is None:
            return self
        return replace(self, rewrite=self.rewrite.for_tenant(tenant))


def _url_prefixes(url: str) -> tuple[bytes, ...]:
    """How a backend may write its own URL in a Location: with or without a default port,
    and scheme-relative."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    default = 443 if parts.scheme == "https" else 80
    ports = [f":{parts.port}"] if parts.port not in (None, default) else ["", f":{default}"]
    return tuple(
        f"{scheme}//{host}{port}{parts.path}".lower().encode()
        for port in ports
        for scheme in (f"{parts.scheme}:", "")
    )


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
    forwarded: list[bytes] = []
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
        elif name == b"forwarded":
            forwarded.append(value)
    if forwarded and not forwarded_for:
        forwarded_for, nearest = _rfc7239(forwarded)
        proto = proto or nearest.get(b"proto", b"")
        forwarded_host = forwarded_host or nearest.get(b"host", b"")
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


def _rfc7239(values: list[bytes]) -> tuple[list[bytes], dict[bytes, bytes]]:
    """A Forwarded header as X-Forwarded-For hops, and the nearest proxy's element.

    Trusted proxies write it, so quoted values holding "," or ";" are not looked for.
    """
    hops: list[bytes] = []
    element: dict[bytes, bytes] = {}
    for value in values:
        for text in value.split(b","):
            element = {}
            for pair in text.split(b";"):
                key, _, item = pair.partition(b"=")
                element[key.strip().lower()] = item.strip().strip(b'"')
            node = element.get(b"for", b"")  # "192.0.2.1:4711", "[2001:db8::1]:4711", "unknown"
            bracketed = node[:1] == b"["
            hop = node[1:].partition(b"]")[0] if bracketed else node.partition(b":")[0]
            if hop:
                hops.append(hop)
    return hops, element


def _forwarded_node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


def _original_client(forwarded_for: list[bytes], peer: str, trusted: Callable[[str], bool]) -> str:
    """As uvicorn's proxy_headers: the nearest address that is not itself a trusted proxy."""
    hops = [hop.strip().decode("latin-1") for value in forwarded_for for hop in value.split(b",")]
    hops = [hop for hop in hops if hop]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer


BodyFraming = Literal["none", "length", "chunked"]


def upstream_headers(
    scope: Scope, view: ClientView, extra: Iterable[Header], backend: Backend
) -> tuple[list[Header], BodyFraming]:
    """The request headers for the backend, raw bytes, and how its body (if any) is framed.

    The client's Host goes to the backend with ``backend.keep_host``; else, or when the client
    sent none, the backend URL's does. Names with "_" stay behind (nginx's default): a backend
    that reads "_" as "-" (CGI) would take X_Edge_Mode for X-Edge-Mode. The framing comes
    last and is edge's: a chunked body goes on chunked, any other with edge's Content-Length.
    """
    client = scope.get("client")
    peer: str = client[0] if client else ""
    keep_host = backend.keep_host
    drop = _DROP[view.trusted, keep_host]
    prefixes = _PREFIXES_TRUSTED if view.trusted else _PREFIXES_UNTRUSTED
    out: list[Header] = []
    named: set[bytes] | None = None
    forwarded_for: list[bytes] = []
    forwarded: list[bytes] = []
    length: bytes | None = None
    chunked = has_host = False
    for name, value in scope["headers"]:
        if name in drop or name.startswith(prefixes) or b"_" in name:
            if name == b"content-length":
                length = value
            elif name == b"connection":
                named = _connection_tokens(value, named)
            elif name == b"transfer-encoding":
                chunked = True
            elif view.trusted:
                if name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"forwarded":
                    forwarded.append(value)
            continue
        if name == b"host":
            has_host = True
        out.append((name, value))
    if named:
        out = [header for header in out if header[0] not in named]
    if not has_host:
        out.append((b"host", backend.origin.host_header))
    if forwarded:
        if not forwarded_for:  # a proxy that speaks only RFC 7239: the same hops in both
            forwarded_for = _rfc7239(forwarded)[0]
        elements = list(forwarded)
        if peer:
            elements.append(f"for={_forwarded_node(peer)}".encode("latin-1"))
        out.append((b"forwarded", b", ".join(elements)))
    if peer:
        forwarded_for.append(peer.encode("latin-1"))
    if forwarded_for:
        out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
    out.append((b"x-forwarded-proto", view.proto.encode("latin-1")))
    if view.host:
        out.append((b"x-forwarded-host", view.host.encode("latin-1")))
    out.append((b"x-request-id", view.request_id.encode("latin-1")))
    out.extend(extra)
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
        return out, "chunked"
    if length is None:
        return out, "none"
    # The parser took the value as a length and reads exactly that much body: written as
    # a plain number, with nothing around it for a backend to read otherwise.
    size = int(length)
    out.append((b"content-length", b"%d" % size))
    return out, "length" if size else "none"


def nominates(value: bytes, protected: AbstractSet[bytes]) -> bool:
    """Whether a Connection header's value names a header edge sets or ``protected`` one,
    in any case and with "_" for "-"."""
    if value.lower() in _PLAIN_CONNECTION:
        return False
    for token in value.split(b","):
        name = token.strip().lower().replace(b"_", b"-")
        if name in protected or name.startswith(_UNNAMEABLE_PREFIXES):
            return True
    return False


def downstream_headers(
    raw: Iterable[Header],
    status: int,
    request_id: bytes,
    rewrite: ResponseRewrite | None = None,
) -> list[Header]:
    """The backend's response headers for the client: raw bytes, every Set-Cookie kept."""
    out: list[Header] = []
    named: set[bytes] | None = None
    for name, value in raw:
        lower = name.lower()
        # lower[0] == 120 ("x") first: a quarter of what startswith costs on every name.
        # With "_" for "-": the request side refuses such names as edge's own too.
        if lower in _DROP_RESPONSE or (lower[0] == 120 and _own(lower)):
            if lower == b"connection":
                named = _connection_tokens(value, named)
            continue
        out.append((lower, value))
    if status < 200 or status in (204, 304):
        # uvicorn would insist on sending the announced length for a body-less status.
        named = (named or set()) | {b"content-length"}
    if named:
        out = [header for header in out if header[0] not in named]
    if rewrite is not None:
        out = rewrite.apply(out)
    out.append((b"x-request-id", request_id))
    return out


def _own(lower: bytes) -> bool:
    return lower[:7].replace(b"_", b"-") == _OWN_PREFIX


def _connection_tokens(value: bytes, named: set[bytes] | None) -> set[bytes] | None:
    """Header names listed in a Connection header that are not already dropped anyway."""
    if value.lower() in _NEVER_NAMED:  # the usual "keep-alive" or "close", without a set
        return named
    tokens = {token.strip().lower() for token in value.split(b",")} - _NEVER_NAMED
    if not tokens:
        return named
    return tokens if named is None else named | tokens
