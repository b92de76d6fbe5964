"""What a portal receives is what edge decided, case by case, as raw bytes on real sockets.

The portals are tests.portals': GreedyPortal keeps every byte edge writes on a keep-alive
connection and reads as many requests out of them as it can find, so whatever edge lets slip
around a request shows up as a request; CgiPortal reads "X_Edge_Mode" as "X-Edge-Mode". The
property test (test_wire_property.py) generates what these examples pick by hand.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from edge import config
from edge.config import UpstreamSettings
from edge.forwarding.headers import UNNAMEABLE, Backend, ClientView, nominates, upstream_headers
from edge.forwarding.upstream import Origin, UpstreamPool, request_head
from tests.support.portals import CgiPortal, GreedyPortal, Parsed
from tests.support.raw import Reply, exchange, request
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for
from tests.support.stack import run_edge

ACTIVE, SETUP, LEGACY = "dance", "swim", "gym"  # gym has no key: legacy
SMUGGLED = (
    f"POST /{SETUP}/checkout HTTP/1.1\r\nHost: {NEW_HOST}\r\nX-Edge-Mode: active\r\n"
    "X-Forwarded-For: 6.6.6.6\r\nContent-Length: 0\r\n\r\n"
).encode()


@dataclass
class Wired:
    port: int
    admin_url: str
    legacy: Any  # GreedyPortal or CgiPortal
    new: Any

    def send(self, data: bytes) -> Reply:
        return exchange(self.port, data, quiet_after=2.0)

    def seen(self) -> list[Parsed]:
        return [*self.legacy.seen, *self.new.seen]

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.admin_url}/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name}")


@contextmanager
def wired(redis: RedisServer, portal: type[Any], **sections: Any) -> Iterator[Wired]:
    prefix = prefix_with_modes(redis, {ACTIVE: "active", SETUP: "setup"})
    with ExitStack() as running:
        legacy = running.enter_context(portal())
        new = running.enter_context(portal())
        raw = settings_for(legacy.url, new.url, redis.url, prefix, **sections)
        _, public_url, admin_url = running.enter_context(run_edge(raw))
        yield Wired(int(public_url.rsplit(":", 1)[1]), admin_url, legacy, new)


@pytest.fixture(scope="module")
def greedy(redis_server: RedisServer) -> Iterator[Wired]:
    allow = [
        {"method": "POST", "path": "/{tenant}/staff/login"},
        {"method": "WEBSOCKET", "path": "/{tenant}/live"},
        {"method": "GET", "path": "/{tenant}/chat"},
    ]
    with wired(redis_server, GreedyPortal, policy={"setup_allow": allow}) as running:
        yield running


@pytest.fixture(scope="module")
def by_header(redis_server: RedisServer) -> Iterator[Wired]:
    """The new front finds the tenant in X-Tenant."""
    with wired(redis_server, GreedyPortal, new={"tenant": "header"}) as running:
        yield running


@pytest.fixture(scope="module")
def cgi(redis_server: RedisServer) -> Iterator[Wired]:
    with wired(redis_server, CgiPortal) as running:
        yield running


def handshake(target: str, host: str = NEW_HOST, extra: bytes = b"") -> bytes:
    key = base64.b64encode(bytes(16)).decode()
    return (
        (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )


# --- Connection may not name framing, Host or edge's own headers ------------------------------

NOMINATIONS = [
    *("content-length", "Content-Length", "CONTENT-LENGTH", "content_length", " content-length"),
    *("close, content-length", "keep-alive, Content-Length", "content-length, close"),
    *("transfer-encoding", "host", "Host, keep-alive", "x-forwarded-for", "X-Forwarded-Proto"),
    *("x-forwarded-host", "x-forwarded-anything", "x-request-id", "forwarded", "x-real-ip"),
    *("x-edge-mode", "X-Edge-Tenant", "x-edge-anything", "X_Edge_Mode", "a, b, content-length"),
]


@pytest.mark.parametrize("nomination", NOMINATIONS)
@pytest.mark.parametrize("host", [NEW_HOST, LEGACY_HOST])
def test_a_connection_header_that_names_framing_or_edges_headers_is_refused(
    greedy: Wired, nomination: str, host: str
) -> None:
    """The attack as found: dropped as hop-by-hop, Content-Length no longer framed the body,
    which the portal parsed as a request edge never judged."""
    before = len(greedy.seen())
    data = (
        f"GET /{ACTIVE}/page HTTP/1.1\r\nHost: {host}\r\nX-Tenant: {ACTIVE}\r\n"
        f"Connection: {nomination}\r\nContent-Length: {len(SMUGGLED)}\r\n\r\n"
    ).encode() + SMUGGLED
    reply = greedy.send(data)
    assert reply.statuses == [400] and reply.closed
    assert len(greedy.seen()) == before


def test_a_second_connection_header_is_judged_as_well(greedy: Wired) -> None:
    data = (
        f"GET /{ACTIVE}/page HTTP/1.1\r\nHost: {NEW_HOST}\r\nConnection: keep-alive\r\n"
        f"Connection: content-length\r\nContent-Length: {len(SMUGGLED)}\r\n\r\n"
    ).encode() + SMUGGLED
    assert greedy.send(data).statuses == [400]


def test_a_connection_header_that_names_any_other_header_drops_only_that_one(
    greedy: Wired,
) -> None:
    """Positive control: nominations edge can honour are honoured, the body framed by edge."""
    before = len(greedy.new.seen)
    data = (
        f"GET /{ACTIVE}/page HTTP/1.1\r\nHost: {NEW_HOST}\r\nConnection: keep-alive, X-Secret\r\n"
        f"X-Secret: hop\r\nContent-Length: {len(SMUGGLED)}\r\nConnection: close\r\n\r\n"
    ).encode() + SMUGGLED
    assert greedy.send(data).statuses == [200]
    (seen,) = greedy.new.seen[before:]
    assert (seen.method, seen.path, seen.body) == ("GET", f"/{ACTIVE}/page", True)
    assert seen.values("x-secret") == []
    assert seen.values("content-length") == [str(len(SMUGGLED))]


def test_the_tenant_header_may_not_be_named_either(by_header: Wired) -> None:
    before = len(by_header.seen())
    data = f"GET /page HTTP/1.1\r\nHost: {NEW_HOST}\r\nX-Tenant: {ACTIVE}\r\n"
    for nomination in ["x-tenant", "X_Tenant", "close, X-TENANT"]:
        reply = by_header.send(f"{data}Connection: {nomination}\r\n\r\n".encode())
        assert reply.statuses == [400], nomination
    assert len(by_header.seen()) == before


def test_nominates_reads_tokens_in_any_case_and_spelling() -> None:
    protected = UNNAMEABLE | {b"x-tenant"}
    for value in [b"Content-Length", b"close,x_tenant", b"keep-alive ,  X-Edge-Mode", b"HOST"]:
        assert nominates(value, protected), value
    for value in [b"keep-alive", b"close", b"Upgrade", b"keep-alive, x-secret", b"te, trailer"]:
        assert not nominates(value, protected), value


# --- framing is edge's own ----------------------------------------------------------------------

VIEW = ClientView("192.0.2.1", "http", NEW_HOST, "id-1")
BACKEND = Backend("http://backend")


def from_client(headers: list[tuple[bytes, bytes]]) -> dict[str, object]:
    return {"headers": headers, "client": ("192.0.2.1", 5555)}


def test_the_content_length_is_edges_whatever_the_client_nominated() -> None:
    """Behind the router's refusal, a second line: Connection cannot remove the framing."""
    sent = [
        (b"host", b"portal.test"),
        (b"connection", b"content-length, x-secret"),
        (b"content-length", b"0005"),
        (b"x-secret", b"1"),
    ]
    headers, framing = upstream_headers(from_client(sent), VIEW, [], BACKEND)
    assert framing == "length"
    assert [value for name, value in headers if name == b"content-length"] == [b"5"]
    assert headers[-1] == (b"content-length", b"5"), "written last, after everything else"
    assert b"x-secret" not in dict(headers)


def test_a_chunked_body_goes_on_chunked_and_nothing_else_frames_it() -> None:
    sent = [(b"host", b"p"), (b"transfer-encoding", b"chunked"), (b"connection", b"x-a")]
    headers, framing = upstream_headers(from_client(sent), VIEW, [], BACKEND)
    assert framing == "chunked"
    assert [n for n, _ in headers if n in (b"content-length", b"transfer-encoding")] == [
        b"transfer-encoding"
    ]


@pytest.mark.parametrize("length", [b"0", b"000"])
def test_an_empty_body_is_announced_as_zero(length: bytes) -> None:
    sent = [(b"host", b"p"), (b"content-length", length)]
    headers, framing = upstream_headers(from_client(sent), VIEW, [], BACKEND)
    assert framing == "none" and (b"content-length", b"0") in headers


def test_the_portal_gets_one_request_framed_by_edge_for_each_forwarded(greedy: Wired) -> None:
    """A body that looks like requests stays the body of the request it came with, by length
    and chunked, on a connection the greedy portal keeps reading."""
    before = len(greedy.new.seen)
    by_length = request(
        b"GET", f"/{ACTIVE}/a".encode(), NEW_HOST.encode(), body=SMUGGLED * 2, close=False
    )
    chunks = b"%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    chunked = (
        f"OPTIONS /{ACTIVE}/b HTTP/1.1\r\nHost: {NEW_HOST}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + chunks
    assert greedy.send(by_length + chunked).statuses == [200, 200]
    seen = greedy.new.seen[before:]
    assert [(s.method, s.path, s.body) for s in seen] == [
        ("GET", f"/{ACTIVE}/a", True),
        ("OPTIONS", f"/{ACTIVE}/b", True),
    ]
    assert seen[0].values("content-length") == [str(2 * len(SMUGGLED))]
    assert seen[1].values("transfer-encoding") == ["chunked"]


class _EarlyPortal:
    """Answers each request as soon as its head is in, keeps the connection open, and keeps
    what arrives after its answer."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.after_answer = b""
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            self.after_answer = data.partition(b"\r\n\r\n")[2]
            while chunk := conn.recv(65536):
                self.after_answer += chunk
        self.closed.set()


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_cut_short_by_an_early_answer_ends_the_connection(chunked: bool) -> None:
    """The portal answered before the body was all written: the rest is never written, so
    the portal's parser still waits for it, and would take the next request for it."""
    portal = _EarlyPortal()

    async def exchange_early() -> bool:
        pool = UpstreamPool(UpstreamSettings())
        connection = await pool.acquire(Origin.of(portal.url))
        framing = (b"transfer-encoding", b"chunked") if chunked else (b"content-length", b"10")
        connection.send_head(request_head("POST", "/x", [(b"host", b"p"), framing]), False, True)
        answered = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"12345"
            await answered.wait()  # the client's next chunk comes after the answer
            yield b"67890"

        upload = asyncio.create_task(connection.send_body(body(), chunked))
        await connection.head()
        while not connection.at_eof:
            await connection.read()
        answered.set()
        await upload
        reusable = connection.reusable()
        pool.release(connection)
        await pool.close()
        return reusable

    assert asyncio.run(exchange_early()) is False
    assert portal.closed.wait(5), "edge closed the connection"
    assert b"67890" not in portal.after_answer


# --- names with "_" stay behind, counted ------------------------------------------------------


def test_underscored_headers_never_reach_a_cgi_portal(cgi: Wired) -> None:
    before = cgi.metric("edge_underscored_headers_dropped_total")
    forged = (
        b"X_Edge_Mode: active\r\nX_Edge_Tenant: dance\r\nX_Forwarded_For: 6.6.6.6\r\n"
        b"X_Request_ID: chosen\r\nX_HTTP_Method_Override: DELETE\r\nx_original_url: /dance/x\r\n"
        b"X-Custom_Thing: 1\r\n"
    )
    reply = cgi.send(request(b"GET", f"/{SETUP}/classes".encode(), NEW_HOST.encode(), forged))
    assert reply.statuses == [200]
    seen = cgi.new.seen[-1]
    assert seen.method == "GET" and seen.path == f"/{SETUP}/classes"
    assert seen.values("x-edge-mode") == ["setup"]
    assert seen.values("x-edge-tenant") == [SETUP]
    assert seen.values("x-forwarded-for") == ["127.0.0.1"]
    assert seen.values("x-request-id") == [reply.header(b"x-request-id").decode()]  # type: ignore[union-attr]
    assert not {"x-http-method-override", "x-original-url", "x-custom-thing"} & {
        name for name, _ in seen.headers
    }
    assert cgi.metric("edge_underscored_headers_dropped_total") == before + 7


def test_the_cgi_portal_would_have_believed_them(cgi: Wired) -> None:
    """Positive control: sent straight to it, the portal takes X_Edge_Mode for X-Edge-Mode."""
    port = int(cgi.new.url.rsplit(":", 1)[1])
    exchange(port, request(b"GET", b"/swim/x", b"p", b"X_Edge_Mode: active\r\n"), 0.5)
    assert cgi.new.seen[-1].values("x-edge-mode") == ["active"]


# --- one tenant header, equal to the tenant edge decided ----------------------------------------


@pytest.mark.parametrize(
    "copies",
    [
        f"X-Tenant: {SETUP}\r\nX-Tenant: {SETUP}\r\n",
        f"X-Tenant: {ACTIVE}\r\nx-tenant: {SETUP}\r\n",
        f"x-tenant: {SETUP}\r\nX-TENANT: {ACTIVE}\r\n",
        f"X-Tenant: {ACTIVE}\r\nX_Tenant: {SETUP}\r\n",
        f"X_Tenant: {SETUP}\r\nX-Tenant: {ACTIVE}\r\n",
        f"x_tenant: {SETUP}\r\nX_TENANT: {ACTIVE}\r\n",
    ],
)
def test_a_tenant_header_sent_twice_in_any_spelling_is_refused(
    by_header: Wired, copies: str
) -> None:
    before = len(by_header.seen())
    reply = by_header.send(request(b"POST", b"/checkout", NEW_HOST.encode(), copies.encode()))
    assert reply.statuses == [400]
    assert len(by_header.seen()) == before


def test_the_portal_gets_exactly_the_tenant_edge_decided(by_header: Wired) -> None:
    reply = by_header.send(
        request(b"POST", b"/checkout", NEW_HOST.encode(), b"X-Tenant: dance\r\n")
    )
    assert reply.statuses == [200]
    seen = by_header.new.seen[-1]
    assert seen.values("x-tenant") == [ACTIVE] and seen.values("x-edge-tenant") == [ACTIVE]


@pytest.mark.parametrize("sent", ["X-Tenant: swim", "x-tenant: swim", "X-TENANT: swim"])
def test_a_tenant_header_on_a_front_that_reads_the_path_stays_behind(
    by_header: Wired, sent: str
) -> None:
    """The legacy front finds the tenant in the path: an X-Tenant there names no one, and a
    portal that read it would act for another business."""
    reply = by_header.send(
        request(b"GET", f"/{LEGACY}/page".encode(), LEGACY_HOST.encode(), f"{sent}\r\n".encode())
    )
    assert reply.statuses == [200]
    seen = by_header.legacy.seen[-1]  # the request itself arrived: its headers are what is seen
    assert seen.values("x-edge-tenant") == [LEGACY] and seen.values("x-tenant") == []


def test_a_tenant_header_spelt_with_underscores_names_no_tenant(by_header: Wired) -> None:
    before = len(by_header.seen())
    reply = by_header.send(request(b"GET", b"/classes", NEW_HOST.encode(), b"X_Tenant: dance\r\n"))
    assert reply.statuses == [404]
    assert len(by_header.seen()) == before


# --- writes that look like reads ----------------------------------------------------------------


def refused_as_a_write(wired: Wired, data: bytes, tenant: str = SETUP) -> None:
    before = len(wired.seen())
    reply = wired.send(data)
    assert reply.statuses == [403], reply.data[:200]
    assert reply.header(b"x-edge-mode") == (b"setup" if tenant == SETUP else b"legacy")
    assert len(wired.seen()) == before


def forwarded_to_the_new_portal(wired: Wired, data: bytes) -> Parsed:
    before = len(wired.new.seen)
    reply = wired.send(data)
    assert reply.statuses[:1] == [200] or wired.new.seen[before:], reply.data[:200]
    (seen,) = wired.new.seen[before:]
    return seen


@pytest.mark.parametrize("tenant", [SETUP, LEGACY])
def test_a_websocket_handshake_is_a_write(greedy: Wired, tenant: str) -> None:
    refused_as_a_write(greedy, handshake(f"/{tenant}/checkout/socket"), tenant)


@pytest.mark.parametrize("path", [f"/{SETUP}/live", f"/{SETUP}/chat"])
def test_a_handshake_on_an_allowed_path_reaches_the_portal(greedy: Wired, path: str) -> None:
    """Allowed by a WEBSOCKET entry, or a GET entry (a GET is always let through, so such an
    entry can only mean the handshake)."""
    seen = forwarded_to_the_new_portal(greedy, handshake(path))
    assert (seen.method, seen.path) == ("GET", path)
    assert seen.values("upgrade") == ["websocket"]


def test_a_handshake_on_an_allowed_path_with_an_override_is_refused(greedy: Wired) -> None:
    refused_as_a_write(greedy, handshake(f"/{SETUP}/live", extra=b"X-HTTP-Method: POST\r\n"))


def test_an_active_tenants_handshake_reaches_the_portal(greedy: Wired) -> None:
    assert forwarded_to_the_new_portal(greedy, handshake(f"/{ACTIVE}/x")).path == f"/{ACTIVE}/x"


QUERY_OVERRIDES = [
    *("_method=DELETE", "_method=delete", "%5Fmethod=PUT", "_METHOD=PATCH", "_method[]=put"),
    *(".method=DELETE", "+_method=DELETE", "%20_method=DELETE", "a=1&_method=DELETE"),
    *("a=1;_method=DELETE", "_method=DEL%45TE", "x-http-method-override=DELETE"),
    *("X_HTTP_METHOD=PUT", "_method=POST", "_method=%20put%20", "_method=GET&_method=DELETE"),
]


@pytest.mark.parametrize("query", QUERY_OVERRIDES)
@pytest.mark.parametrize("tenant", [SETUP, LEGACY])
def test_a_method_in_the_query_that_names_a_write_is_a_write(
    greedy: Wired, query: str, tenant: str
) -> None:
    target = f"/{tenant}/classes?{query}".encode()
    refused_as_a_write(greedy, request(b"GET", target, NEW_HOST.encode()), tenant)


@pytest.mark.parametrize("query", ["_method=GET", "_method=", "method=DELETE", "my_method=PUT"])
def test_a_query_that_names_no_write_is_a_read(greedy: Wired, query: str) -> None:
    target = f"/{SETUP}/classes?{query}"
    seen = forwarded_to_the_new_portal(greedy, request(b"GET", target.encode(), NEW_HOST.encode()))
    assert seen.query == query


def test_an_active_tenants_query_reaches_it_unchanged(greedy: Wired) -> None:
    target = f"/{ACTIVE}/classes/7?_method=DELETE"
    seen = forwarded_to_the_new_portal(greedy, request(b"GET", target.encode(), NEW_HOST.encode()))
    assert (seen.method, seen.query) == ("GET", "_method=DELETE")


def test_the_allowed_write_with_a_query_override_is_refused(greedy: Wired) -> None:
    target = f"/{SETUP}/staff/login?_method=DELETE".encode()
    refused_as_a_write(greedy, request(b"POST", target, NEW_HOST.encode(), body=b"u=1"))


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS"])
@pytest.mark.parametrize("tenant", [SETUP, LEGACY])
def test_a_read_with_a_body_is_a_write(greedy: Wired, method: bytes, tenant: str) -> None:
    target = f"/{tenant}/classes".encode()
    refused_as_a_write(greedy, request(method, target, NEW_HOST.encode(), body=b"x=1"), tenant)
    chunked = (
        method
        + b" "
        + target
        + f" HTTP/1.1\r\nHost: {NEW_HOST}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n0\r\n\r\n".encode()
    )
    refused_as_a_write(greedy, chunked, tenant)


def test_a_read_with_an_empty_body_is_a_read(greedy: Wired) -> None:
    data = request(
        b"GET", f"/{SETUP}/classes".encode(), NEW_HOST.encode(), b"Content-Length: 0\r\n"
    )
    assert forwarded_to_the_new_portal(greedy, data).body is False


def test_an_active_tenant_gets_a_read_with_its_body(greedy: Wired) -> None:
    data = request(b"GET", f"/{ACTIVE}/search".encode(), NEW_HOST.encode(), body=b"q=1")
    assert forwarded_to_the_new_portal(greedy, data).body is True


@pytest.mark.parametrize(
    "name", ["X-Method", "x-method", "X-HTTP-Method", "X-Forwarded-Method", "X-Original-Method"]
)
def test_every_override_header_is_a_write(greedy: Wired, name: str) -> None:
    header = f"{name}: DELETE\r\n".encode()
    refused_as_a_write(greedy, request(b"GET", f"/{SETUP}/x".encode(), NEW_HOST.encode(), header))


PATH_HEADERS = [
    *("X-Original-URL", "X-Rewrite-URL", "X-Override-URL", "X-Original-URI", "X-Original-Path"),
    *("X-Forwarded-URI", "X-Forwarded-Path", "X-Envoy-Original-Path", "x_original_url"),
]


def test_a_header_that_rewrites_the_path_never_reaches_the_portal(greedy: Wired) -> None:
    headers = "".join(f"{name}: /{SETUP}/checkout\r\n" for name in PATH_HEADERS).encode()
    data = request(b"POST", f"/{ACTIVE}/x".encode(), NEW_HOST.encode(), headers, b"a=1")
    seen = forwarded_to_the_new_portal(greedy, data)
    assert not {name.lower().replace("_", "-") for name in PATH_HEADERS} & dict(seen.headers).keys()


@pytest.mark.parametrize(
    "climb",
    ["%u002e%u002e", "%U002E%U002E", "%c0%ae%c0%ae", "%e0%80%ae%e0%80%ae", "%25c0%25ae%25c0%25ae"],
)
def test_a_climb_in_any_encoding_is_refused(greedy: Wired, climb: str) -> None:
    before = len(greedy.seen())
    target = f"/{ACTIVE}/{climb}/{SETUP}/checkout".encode()
    assert greedy.send(request(b"POST", target, NEW_HOST.encode(), body=b"a=1")).statuses == [400]
    assert len(greedy.seen()) == before


@pytest.mark.parametrize("name", ["X_Tenant", "X Tenant", "X-Tenant:", ""])
def test_a_tenant_header_edge_would_not_forward_is_a_config_error(name: str) -> None:
    raw = settings_for("http://l:1", "http://n:1", "memory://", "p:", new={"tenant_header": name})
    with pytest.raises(config.ConfigError, match=r"new\.tenant_header"):
        config.from_mapping(raw)
