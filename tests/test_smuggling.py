"""Request smuggling and malformed HTTP, as raw bytes on a socket to the whole router.

Every request is followed by a smuggled one: a write to the setup tenant's checkout, which edge
refuses whenever it reads it as a request. If a backend ever receives it as a request, it was
smuggled past edge. Framing that edge or its parser (llhttp) could read two ways is refused
with 400 and the connection closed, so nothing after it is read; framing that is sound is
re-framed by edge, so a backend only ever sees edge's own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.raw import Reply, exchange
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.settings import NEW_HOST
from tests.support.stack import Stack, stack

ACTIVE, SETUP = "dance", "swim"
SMUGGLED = f"POST /{SETUP}/checkout HTTP/1.1\r\nHost: {NEW_HOST}\r\nContent-Length: 0\r\n\r\n"
HEAD = f"POST /{ACTIVE}/enroll HTTP/1.1\r\nHost: {NEW_HOST}\r\n"
CHUNKED_EMPTY = "0\r\n\r\n"

# Each is refused with 400 and the connection closed; nothing reaches a backend.
REFUSED = {
    "duplicate Content-Length": "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "conflicting Content-Length": "Content-Length: 5\r\nContent-Length: 0\r\n\r\nhello",
    "comma-listed Content-Length": "Content-Length: 5, 5\r\n\r\nhello",
    "comma-listed conflicting Content-Length": "Content-Length: 0, 5\r\n\r\nhello",
    "signed Content-Length": "Content-Length: +5\r\n\r\nhello",
    "negative Content-Length": "Content-Length: -1\r\n\r\nhello",
    "hexadecimal Content-Length": "Content-Length: 0x5\r\n\r\nhello",
    "Content-Length with a space inside": "Content-Length: 5 5\r\n\r\nhello",
    "Content-Length past 2**64": "Content-Length: 18446744073709551616\r\n\r\nhello",
    "Content-Length of 30 digits": f"Content-Length: {'9' * 30}\r\n\r\nhello",
    "Content-Length then Transfer-Encoding": (
        f"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKED_EMPTY}"
    ),
    "Transfer-Encoding then Content-Length": (
        f"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n{CHUNKED_EMPTY}"
    ),
    "chunked, identity": f"Transfer-Encoding: chunked, identity\r\n\r\n{CHUNKED_EMPTY}",
    "identity, chunked": f"Transfer-Encoding: identity, chunked\r\n\r\n{CHUNKED_EMPTY}",
    "gzip, chunked": f"Transfer-Encoding: gzip, chunked\r\n\r\n{CHUNKED_EMPTY}",
    "chunked, chunked": f"Transfer-Encoding: chunked, chunked\r\n\r\n{CHUNKED_EMPTY}",
    "gzip alone": f"Transfer-Encoding: gzip\r\n\r\n{CHUNKED_EMPTY}",
    "xchunked": f"Transfer-Encoding: xchunked\r\n\r\n{CHUNKED_EMPTY}",
    "chunkedx": f"Transfer-Encoding: chunkedx\r\n\r\n{CHUNKED_EMPTY}",
    "chunked with a vertical tab": f"Transfer-Encoding: \x0bchunked\r\n\r\n{CHUNKED_EMPTY}",
    "a second Transfer-Encoding: identity": (
        f"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{CHUNKED_EMPTY}"
    ),
    "a second Transfer-Encoding: chunked": (
        f"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKED_EMPTY}"
    ),
    "two Transfer-Encoding: chunked": (
        f"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKED_EMPTY}"
    ),
    "a space before the colon": f"Transfer-Encoding : chunked\r\n\r\n{CHUNKED_EMPTY}",
    "Transfer-Encoding folded into the header before": (
        f"X-Note: a\r\n Transfer-Encoding: chunked\r\n\r\n{CHUNKED_EMPTY}"
    ),
    "a folded Transfer-Encoding value": f"Transfer-Encoding:\r\n chunked\r\n\r\n{CHUNKED_EMPTY}",
    "obs-fold": "X-Note: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "a bare CR inside a value": "X-Note: a\rb\r\nContent-Length: 0\r\n\r\n",
    "a bare CR ending a line": "X-Note: a\rContent-Length: 0\r\n\r\n",
    "a bare LF ending a line": "X-Note: a\nContent-Length: 0\r\n\r\n",
    "NUL in a value": "X-Note: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "NUL in a name": "X-No\x00te: a\r\nContent-Length: 0\r\n\r\n",
    "a control byte in a value": "X-Note: a\x01b\r\nContent-Length: 0\r\n\r\n",
    "a line without a colon": "X-Note\r\nContent-Length: 0\r\n\r\n",
    "a chunk size past 2**64": (
        "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nhello\r\n0\r\n\r\n"
    ),
    "a chunk size with a space": "Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunks ending in LF alone": "Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "a chunk longer than its size": "Transfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
    "a second Host": f"Host: {NEW_HOST}\r\nContent-Length: 0\r\n\r\n",
    "another front's Host as well": "Host: parents.test\r\nContent-Length: 0\r\n\r\n",
}


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer) -> Iterator[Stack]:
    prefix = prefix_with_modes(redis_server, {ACTIVE: "active", SETUP: "setup"})
    with stack(redis_server.url, prefix) as running:
        yield running


def send(edge: Stack, data: str) -> Reply:
    port = int(edge.public_url.rsplit(":", 1)[1])
    return exchange(port, data.encode("latin-1"))


def never_smuggled(edge: Stack) -> None:
    seen = [*edge.legacy.seen, *edge.new.seen]
    assert not [s for s in seen if s.path == f"/{SETUP}/checkout"], "a smuggled request got in"


@pytest.mark.parametrize("rest", REFUSED.values(), ids=REFUSED.keys())
def test_ambiguous_framing_is_refused_and_ends_the_connection(edge: Stack, rest: str) -> None:
    before = edge.reached_backend()
    reply = send(edge, HEAD + rest + SMUGGLED)
    assert reply.statuses == [400]
    assert reply.closed
    assert edge.reached_backend() == before
    never_smuggled(edge)


def test_control_and_non_ascii_bytes_in_the_target_are_refused(edge: Stack) -> None:
    """The router relies on this: a path as sent holds neither (only percent-encoded)."""
    before = edge.reached_backend()
    for byte in [*range(0x20), 0x7F, 0x80, 0xC3, 0xFF]:
        target = b"/" + ACTIVE.encode() + b"/a" + bytes([byte]) + b"b"
        data = b"GET " + target + b" HTTP/1.1\r\nHost: " + NEW_HOST.encode() + b"\r\n\r\n"
        port = int(edge.public_url.rsplit(":", 1)[1])
        reply = exchange(port, data)
        assert reply.statuses == [400] and reply.closed, hex(byte)
    assert edge.reached_backend() == before


def test_transfer_encoding_on_http_1_0_is_refused(edge: Stack) -> None:
    head = HEAD.replace("HTTP/1.1", "HTTP/1.0")
    reply = send(edge, f"{head}Transfer-Encoding: chunked\r\n\r\n{CHUNKED_EMPTY}{SMUGGLED}")
    assert reply.statuses == [400] and reply.closed
    never_smuggled(edge)


def test_a_missing_host_is_refused(edge: Stack) -> None:
    reply = send(edge, f"POST /{ACTIVE}/enroll HTTP/1.1\r\nContent-Length: 0\r\n\r\n{SMUGGLED}")
    assert reply.statuses == [400] and reply.closed
    never_smuggled(edge)


@pytest.mark.parametrize(
    "encoding", ["chunked", "CHUNKED", "Chunked", "  chunked", "\tchunked", "chunked  "]
)
def test_plain_chunked_is_reframed_and_what_follows_is_judged_on_its_own(
    edge: Stack, encoding: str
) -> None:
    """Whitespace around a field value is not part of it (RFC 9110 5.5, RFC 9112 5: OWS on
    either side; nginx trims both) and transfer-coding names are case-insensitive: these are
    one sound "chunked". edge trims the value itself, so its verdict does not hang on which
    parser version trims what (httptools 0.9 trims trailing spaces, 0.8 did not; it
    refuses a trailing tab outright, which is stricter and as safe); and it re-frames the body,
    so the portal never sees the client's spelling. The request after the body is a
    pipelined request, and edge refuses it like any other preview write."""
    before = len(edge.new.seen)
    body = f"5\r\nhello\r\n{len(SMUGGLED):x}\r\n{SMUGGLED}\r\n0\r\n\r\n"
    reply = send(edge, f"{HEAD}Transfer-Encoding: {encoding}\r\n\r\n{body}{SMUGGLED}")
    assert reply.statuses == [200, 403]
    (seen,) = edge.new.seen[before:]
    assert (seen.method, seen.path) == ("POST", f"/{ACTIVE}/enroll")
    assert seen.body == b"hello" + SMUGGLED.encode()
    assert seen.header("transfer-encoding") == "chunked", "edge's own framing, not the client's"
    never_smuggled(edge)


def test_a_body_that_looks_like_a_request_stays_a_body(edge: Stack) -> None:
    before = len(edge.new.seen)
    reply = send(
        edge,
        f"GET /{ACTIVE}/page HTTP/1.1\r\nHost: {NEW_HOST}\r\nContent-Length: {len(SMUGGLED)}\r\n"
        f"\r\n{SMUGGLED}",
    )
    assert reply.statuses == [200]
    (seen,) = edge.new.seen[before:]
    assert seen.path == f"/{ACTIVE}/page" and seen.body == SMUGGLED.encode()
    never_smuggled(edge)


def test_a_refused_write_with_a_body_does_not_desynchronise_the_connection(edge: Stack) -> None:
    """edge refuses before it reads the body; the parser still skips exactly that body, so the
    next request on the connection is read from where it starts."""
    body = SMUGGLED
    first = f"POST /{SETUP}/pay HTTP/1.1\r\nHost: {NEW_HOST}\r\nContent-Length: {len(body)}\r\n"
    second = f"GET /{SETUP}/schedule HTTP/1.1\r\nHost: {NEW_HOST}\r\nConnection: close\r\n\r\n"
    before = len(edge.new.seen)
    reply = send(edge, f"{first}\r\n{body}{second}")
    assert reply.statuses == [403, 200]
    assert [(s.method, s.path) for s in edge.new.seen[before:]] == [("GET", f"/{SETUP}/schedule")]
    never_smuggled(edge)
