"""Limits on the request head: target length (414), header bytes and count (431).

llhttp and uvicorn buffer a request head until it ends, however long; edge's protocol stops
at the configured limits, answers, and closes the connection before the app sees anything.
The answer is edge's refusal page, or its JSON shape when the request's Accept asks for it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from edge import config
from tests.support.raw import Reply, exchange
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.settings import NEW_HOST, settings_for
from tests.support.stack import Stack, stack

ACTIVE = "dance"
URL_BYTES, HEADER_BYTES, HEADERS = 1024, 4096, 20
BASE = [("host", NEW_HOST), ("connection", "close")]
AS_JSON = [*BASE, ("accept", "application/json")]


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer) -> Iterator[Stack]:
    prefix = prefix_with_modes(redis_server, {ACTIVE: "active"})
    limits = {"max_url_bytes": URL_BYTES, "max_header_bytes": HEADER_BYTES, "max_headers": HEADERS}
    with stack(redis_server.url, prefix, server=limits) as running:
        yield running


def get(
    edge: Stack, target: str, headers: list[tuple[str, str]] = BASE, method: str = "GET"
) -> Reply:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    port = int(edge.public_url.rsplit(":", 1)[1])
    return exchange(port, f"{method} {target} HTTP/1.1\r\n{lines}\r\n".encode())


def padded(size: int, base: list[tuple[str, str]] = BASE) -> list[tuple[str, str]]:
    """base plus one header, so that names and values come to exactly size bytes."""
    used = sum(len(name) + len(value) for name, value in base) + len("x-pad")
    return [*base, ("x-pad", "p" * (size - used))]


def test_a_target_at_the_limit_passes_and_one_byte_more_is_414(edge: Stack) -> None:
    path = f"/{ACTIVE}/"
    at_limit = path + "a" * (URL_BYTES - len(path) - 3) + "?q="
    assert len(at_limit) == URL_BYTES
    assert get(edge, at_limit).status == 200
    before = edge.reached_backend()
    over = get(edge, at_limit + "b")
    assert over.statuses == [414] and over.closed
    assert edge.reached_backend() == before


def test_headers_at_the_byte_limit_pass_and_one_byte_more_is_431(edge: Stack) -> None:
    assert get(edge, f"/{ACTIVE}/", padded(HEADER_BYTES)).status == 200
    before = edge.reached_backend()
    over = get(edge, f"/{ACTIVE}/", padded(HEADER_BYTES + 1))
    assert over.statuses == [431] and over.closed
    assert edge.reached_backend() == before


def test_headers_at_the_count_limit_pass_and_one_more_is_431(edge: Stack) -> None:
    extra = [(f"x-{n}", "1") for n in range(HEADERS - len(BASE))]
    assert get(edge, f"/{ACTIVE}/", [*BASE, *extra]).status == 200
    over = get(edge, f"/{ACTIVE}/", [*BASE, *extra, ("x-one-more", "1")])
    assert over.statuses == [431] and over.closed


def too_long_target() -> str:
    return f"/{ACTIVE}/" + "a" * URL_BYTES


@pytest.mark.parametrize(
    ("status", "target", "headers"),
    [
        (414, too_long_target(), BASE),
        (414, too_long_target(), AS_JSON),
        (431, f"/{ACTIVE}/", padded(HEADER_BYTES + 1)),
        (431, f"/{ACTIVE}/", padded(HEADER_BYTES + 1, AS_JSON)),
        (431, f"/{ACTIVE}/", [*AS_JSON, *((f"x-{n}", "1") for n in range(HEADERS))]),
    ],
)
def test_a_head_over_the_limits_gets_the_refusal_page_or_json_as_accept_asks(
    edge: Stack, status: int, target: str, headers: list[tuple[str, str]]
) -> None:
    reply = get(edge, target, headers)
    assert reply.statuses == [status] and reply.closed
    assert reply.header(b"cache-control") == b"no-store"
    body = reply.responses[0].body
    if ("accept", "application/json") in headers:
        assert reply.header(b"content-type") == b"application/json"
        answer = json.loads(body)
        assert answer == {"error": answer["error"], "tenant": None, "mode": None}
        assert answer["error"].endswith("than this server accepts.")
    else:
        assert reply.header(b"content-type") == b"text/html; charset=utf-8"
        assert body.startswith(b"<!doctype html>") and b"than this server accepts." in body


@pytest.mark.parametrize("method", ["HEAD", "GET"])
@pytest.mark.parametrize(
    ("status", "target", "headers"),
    [(414, too_long_target(), BASE), (431, f"/{ACTIVE}/", padded(HEADER_BYTES + 1))],
)
def test_the_answer_to_a_head_over_the_limits_has_no_page_after_its_head(
    edge: Stack, method: str, status: int, target: str, headers: list[tuple[str, str]]
) -> None:
    reply = get(edge, target, headers, method)
    head, _, rest = reply.data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status) and reply.closed
    length = int(reply.header(b"content-length") or b"-1")
    assert length > 0 and len(rest) == (0 if method == "HEAD" else length)  # GET: the control


@pytest.mark.parametrize(
    ("status", "start"),
    [
        (431, f"GET /{ACTIVE}/ HTTP/1.1\r\nHost: {NEW_HOST}\r\nX-Endless: "),
        (414, f"GET /{ACTIVE}/"),
    ],
    ids=["header", "target"],
)
def test_a_head_that_never_ends_is_cut_off(edge: Stack, status: int, start: str) -> None:
    """The server stops reading and answers long before the client runs out of patience; what
    it accepted meanwhile is bounded by the limits plus one socket read, not by the client."""
    port = int(edge.public_url.rsplit(":", 1)[1])
    sent, ceiling, chunk = 0, 64 * 1024 * 1024, b"a" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(start.encode())
        try:
            while sent < ceiling:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < ceiling, "the server kept reading a header without end"
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 %d " % status)


def closed_for(edge: Stack, reason: str) -> float:
    metrics = httpx.get(f"{edge.admin_url}/metrics", timeout=10).text
    sample = f'edge_client_connections_closed_total{{reason="{reason}"}} '
    [line] = [line for line in metrics.splitlines() if line.startswith(sample)]
    return float(line.removeprefix(sample))


def test_each_head_refused_before_routing_is_counted_by_its_reason(edge: Stack) -> None:
    reasons = ("target_too_long", "head_too_large", "bad_request")
    before = [closed_for(edge, reason) for reason in reasons]
    port = int(edge.public_url.rsplit(":", 1)[1])
    assert get(edge, too_long_target()).statuses == [414]
    assert get(edge, f"/{ACTIVE}/", padded(HEADER_BYTES + 1)).statuses == [431]
    malformed = exchange(
        port, f"GET /{ACTIVE}/ HTTP/1.1\r\nHost: {NEW_HOST}\r\nNo colon\r\n\r\n".encode()
    )
    assert malformed.statuses == [400]
    after = [closed_for(edge, reason) for reason in reasons]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def test_the_limits_are_validated_and_default_to_nginxs() -> None:
    raw = settings_for("http://127.0.0.1:1", "http://127.0.0.1:2", "memory://", "edge:")
    server = config.from_mapping(raw).server
    assert (server.max_url_bytes, server.max_header_bytes, server.max_headers) == (
        8192,
        32768,
        100,
    )
    for key, value in [("max_headers", 5), ("max_url_bytes", 10), ("max_header_bytes", "big")]:
        bad = {**raw, "server": {**raw["server"], key: value}}
        with pytest.raises(config.ConfigError, match=f"server.{key}: "):
            config.from_mapping(bad)
