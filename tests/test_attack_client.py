"""The client-facing wire, attacked as an outsider would: raw sockets to `edge serve`.

Each attack is met by a positive control: the same request without its hostile part does what
a customer expects, so that a refusal is the attack's, not the fixture's.

- Trailer fields (after a chunked body) are not headers: they never change the request edge
  judged or what the portal gets, and they are bounded as a head is.
- A request that asks to switch to a protocol edge does not speak (`Upgrade: h2c`) cannot
  carry a body: llhttp would read the body as the next request.
- Requests pipelined ahead of their answers are bounded per connection.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.support.portals import StrictPortal
from tests.support.process import EdgeProcess
from tests.support.raw import Reply, exchange, read_reply
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for

ACTIVE, SETUP, LEGACY = "dance", "swim", "gym"
PATIENCE = 10.0


class Wire:
    def __init__(self, edge: EdgeProcess, legacy: StrictPortal, new: StrictPortal) -> None:
        self.edge, self.legacy, self.new = edge, legacy, new

    def send(self, data: bytes, quiet_after: float = 1.0) -> Reply:
        return exchange(self.edge.port, data, quiet_after)

    def served(self) -> bool:
        """A fresh customer's GET is answered by the portal: the positive control."""
        reply = self.send(b"GET /%s/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
            ACTIVE.encode(), NEW_HOST.encode()
        ))  # fmt: skip
        return reply.statuses == [200]


@pytest.fixture(scope="module")
def wire(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    prefix = prefix_with_modes(redis_server, {ACTIVE: "active", SETUP: "setup"})
    with ExitStack() as running:
        legacy = running.enter_context(StrictPortal())
        new = running.enter_context(StrictPortal())
        raw = settings_for(
            legacy.url,
            new.url,
            redis_server.url,
            prefix,
            legacy={"tenant": "header", "tenant_header": "X-Tenant"},
        )
        edge = running.enter_context(EdgeProcess(raw, tmp_path_factory.mktemp("attack")))
        yield Wire(edge, legacy, new)


def chunked(host: str, target: str, fields: str, trailers: bytes) -> bytes:
    head = f"POST {target} HTTP/1.1\r\nHost: {host}\r\n{fields}Transfer-Encoding: chunked\r\n"
    return head.encode() + b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n" + trailers + b"\r\n"


# --- trailers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trailers",
    [
        b"",  # the positive control
        b"X-Tenant: %s\r\n" % ACTIVE.encode(),
        b"X_Tenant: %s\r\n" % ACTIVE.encode(),
        b"Host: %s\r\n" % NEW_HOST.encode(),
        b"X-HTTP-Method-Override: DELETE\r\nX-Original-URL: /%s/checkout\r\n" % ACTIVE.encode(),
    ],
    ids=["none", "tenant", "tenant with _", "host", "overrides"],
)
def test_a_trailer_is_not_a_header_of_the_request(wire: Wire, trailers: bytes) -> None:
    """Legacy front, by the header rule: a setup tenant's upload goes to the legacy portal with
    the one tenant header edge judged, whatever the trailer section says."""
    seen = len(wire.legacy.seen)
    reply = wire.send(chunked(LEGACY_HOST, "/upload", f"X-Tenant: {SETUP}\r\n", trailers))
    assert reply.statuses == [200]
    [parsed] = wire.legacy.seen[seen:]
    assert (parsed.method, parsed.raw_path, parsed.body) == ("POST", b"/upload", True)
    assert parsed.values("x-tenant") == [SETUP] and parsed.values("x-edge-tenant") == [SETUP]
    assert parsed.values("host") == [LEGACY_HOST]
    assert parsed.values("x-http-method-override") == parsed.values("x-original-url") == []


@pytest.mark.parametrize(
    "trailers",
    [
        b"X-A: b\r\n" * 101,  # more fields than max_headers (100)
        b"X-A: " + b"b" * 33 * 1024 + b"\r\n",  # more bytes than max_header_bytes (32 KiB)
    ],
    ids=["count", "bytes"],
)
def test_a_trailer_section_over_the_head_limits_is_431(wire: Wire, trailers: bytes) -> None:
    reply = wire.send(chunked(NEW_HOST, f"/{ACTIVE}/upload", "", trailers))
    assert reply.statuses == [431] and reply.closed
    assert wire.served()


def test_a_trailer_line_without_end_is_431_and_edge_stays_small(wire: Wire) -> None:
    """uvicorn would buffer the line (and keep every trailer field) for as long as it comes."""
    before = wire.edge.peak_rss()
    with socket.create_connection(("127.0.0.1", wire.edge.port), timeout=PATIENCE) as sock:
        sock.sendall(chunked(NEW_HOST, f"/{ACTIVE}/upload", "", b"X-A: ")[:-2])
        closed = False
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for _ in range(64):  # 64 MiB, a MiB at a time, until edge closes
                sock.sendall(b"b" * 2**20)
        sock.settimeout(PATIENCE)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
    assert received.startswith(b"HTTP/1.1 431 ") and closed
    assert wire.edge.peak_rss() - before < 32 * 2**20
    assert wire.served()


# --- Upgrade to a protocol edge does not speak ---------------------------------------------

SMUGGLED = f"POST /{ACTIVE}/smuggled HTTP/1.1\r\nHost: {NEW_HOST}\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("upgrade", ["h2c", "foo/2", "websocket, h2c", "TLS/1.2"])
@pytest.mark.parametrize(
    "framing",
    [
        f"Content-Length: {len(SMUGGLED)}\r\n\r\n",
        f"Transfer-Encoding: chunked\r\n\r\n{len(SMUGGLED):x}\r\n",
    ],
    ids=["length", "chunked"],
)
def test_an_upgrade_edge_does_not_make_cannot_carry_a_body(
    wire: Wire, upgrade: str, framing: str
) -> None:
    """The body comes in a packet of its own: read as a request, it would be one that a proxy
    in front of edge never sent (and its answer one that proxy takes for another's)."""
    for upgrading in (False, True):  # without Upgrade first: the positive control
        seen = len(wire.new.seen)
        fields = f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n" if upgrading else ""
        head = f"POST /{ACTIVE}/upload HTTP/1.1\r\nHost: {NEW_HOST}\r\n{fields}{framing}"
        body = SMUGGLED + ("\r\n0\r\n\r\n" if "chunked" in framing else "")
        with socket.create_connection(("127.0.0.1", wire.edge.port), timeout=PATIENCE) as sock:
            sock.sendall(head.encode())
            time.sleep(0.3)  # two packets: edge has read the head alone
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(body.encode() + b"GET /%s/ HTTP/1.1\r\nHost: %s\r\n" % (
                    ACTIVE.encode(), NEW_HOST.encode()
                ) + b"Connection: close\r\n\r\n")  # fmt: skip
            reply = read_reply(sock, PATIENCE)
        paths = [parsed.raw_path for parsed in wire.new.seen[seen:]]
        if upgrading:
            assert reply.statuses == [400] and reply.closed
            assert paths == []
        else:
            assert reply.statuses == [200, 200]
            assert paths == [f"/{ACTIVE}/upload".encode(), f"/{ACTIVE}/".encode()]


@pytest.mark.parametrize("upgrade", ["h2c", "foo/2"])
def test_a_request_behind_an_upgrade_is_answered_or_the_connection_closed(
    wire: Wire, upgrade: str
) -> None:
    """A GET that asks for h2c is served as HTTP/1.1; llhttp stops reading HTTP after it, so
    what came with it is never silently dropped on an open connection."""
    ask = f"GET /{ACTIVE}/a HTTP/1.1\r\nHost: {NEW_HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    ask += f"Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    then = f"GET /{ACTIVE}/b HTTP/1.1\r\nHost: {NEW_HOST}\r\n\r\n"
    reply = wire.send((ask + then).encode())
    assert reply.statuses == [200, 200] or (reply.statuses == [200] and reply.closed)
    assert wire.served()


# --- pipelining --------------------------------------------------------------------------------


def test_requests_pipelined_ahead_of_their_answers_are_bounded(wire: Wire) -> None:
    """40 connections each send 300 KiB of tiny pipelined requests and read nothing: uvicorn
    would parse some 10,000 from each into waiting request objects (about 25 MiB a
    connection). A fresh customer is served meanwhile; a client that reads its answers gets
    every one of 500 it pipelined, in order (the control)."""
    pages = [b"/%s/p%d" % (ACTIVE.encode(), n) for n in range(500)]
    seen = len(wire.new.seen)
    asked = b"".join(
        b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (page, NEW_HOST.encode()) for page in pages
    )
    assert wire.send(asked).statuses == [200] * len(pages)
    assert [parsed.raw_path for parsed in wire.new.seen[seen:]] == pages
    one = b"GET / HTTP/1.1\r\nHost: unknown.test\r\n\r\n"  # 421 from edge itself
    before = wire.edge.peak_rss()
    with ExitStack() as held:
        for _ in range(40):
            sock = held.enter_context(socket.create_connection(("127.0.0.1", wire.edge.port)))
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(one * (300 * 1024 // len(one)))
        time.sleep(2)
        assert wire.served()
        grown = wire.edge.peak_rss() - before
    assert grown < 64 * 2**20, f"edge grew by {grown / 2**20:.0f} MiB"


# --- absolute-form targets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "answered"),
    [
        (f"http://{NEW_HOST}/{ACTIVE}/a", 200),
        (f"http://{NEW_HOST.upper()}:80/{ACTIVE}/a", 200),
        (f"https://{NEW_HOST}/{ACTIVE}/a", 200),
        (f"http://{LEGACY_HOST}/{ACTIVE}/a", 400),
        (f"http://other.test/{ACTIVE}/a", 400),
        (f"http://user@{NEW_HOST}/{ACTIVE}/a", 400),
        (f"http://{NEW_HOST}:8080/{ACTIVE}/a", 400),
    ],
)
def test_an_absolute_target_names_the_host_its_host_header_does(
    wire: Wire, target: str, answered: int
) -> None:
    """RFC 9112 3.2.2: a server takes the host of an absolute-form target over Host; edge
    routes by Host. Where the two disagree, a proxy in front that reads the target routes
    the request to one portal and edge to another: refused, closed, nothing forwarded."""
    seen = len(wire.legacy.seen) + len(wire.new.seen)
    reply = wire.send(
        f"POST {target} HTTP/1.1\r\nHost: {NEW_HOST}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    forwarded = len(wire.legacy.seen) + len(wire.new.seen) - seen
    if answered == 200:
        assert reply.statuses == [200] and forwarded == 1
    else:
        assert reply.statuses == [400] and reply.closed and forwarded == 0


# --- Host ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "answered"),
    [
        (NEW_HOST, 200),
        (NEW_HOST.upper(), 200),
        (f"{NEW_HOST}:8080", 200),
        (f"{NEW_HOST}:@evil.test", 421),
        (f"{NEW_HOST}:80@evil.test", 421),
        (f"{NEW_HOST}:x", 421),
        (f"{NEW_HOST}:80/evil", 421),
    ],
)
def test_a_host_is_a_configured_name_and_a_port_nothing_more(
    wire: Wire, host: str, answered: int
) -> None:
    """The portal builds its own links (a password reset, say) from Host or X-Forwarded-Host:
    "portal.test:@evil.test" in a URL is evil.test with a user name. Only a port (digits) may
    follow a configured host."""
    seen = len(wire.new.seen)
    reply = wire.send(
        f"GET /{ACTIVE}/a HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    assert reply.statuses == [answered]
    hosts = [
        parsed.values("host") + parsed.values("x-forwarded-host") for parsed in wire.new.seen[seen:]
    ]
    assert hosts == ([[host, host]] if answered == 200 else [])


# --- method overrides as PHP reads parameter names ----------------------------------------------


@pytest.mark.parametrize(
    ("query", "override"),
    [
        ("x%00=DELETE", False),  # the control: a NUL in another name
        ("%00_method=DELETE", False),  # PHP reads the name as ""
        ("_method%00=DELETE", True),  # PHP reads names as C strings: "_method"
        ("_method%00x=DELETE", True),
        ("_method%00[]=DELETE", True),
    ],
)
def test_a_method_override_whose_name_php_cuts_at_a_nul_is_a_write(
    wire: Wire, query: str, override: bool
) -> None:
    """In setup, a read that names a write is refused, and so is the allow-listed login POST
    that claims to be another write: Laravel and Symfony take `_method` from the query."""
    for method, page in (("GET", "x"), ("POST", "staff/login")):
        seen = len(wire.new.seen)
        request = f"{method} /{SETUP}/{page}?{query} HTTP/1.1\r\nHost: {NEW_HOST}\r\n"
        reply = wire.send(f"{request}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        assert reply.statuses == [403 if override else 200]
        assert len(wire.new.seen) - seen == (0 if override else 1)
