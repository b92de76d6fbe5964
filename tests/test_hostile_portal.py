"""A buggy or hostile portal cannot mix customers or take edge down.

`edge serve` (a process of its own, so its memory can be measured) in front of two raw-socket
portals, one per front, each allowed one pooled connection: a connection edge wrongly kept
would carry the very next request. Every customer names itself in ``X-Customer``; an answer
the portal means for a customer names that customer in its body. After each misstep of the
portal a second customer asks on the same front and must get its own answer, and the portal
must never have read one customer's bytes as part of another's request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hostile import (
    HEAD_LIMIT,
    LEGACY,
    NEW,
    Edge,
    Reply,
    call,
    hostile_edge,
    raw_answer,
)
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.waiting import WAIT, eventually


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    prefix = prefix_with_modes(redis_server, {"dance": "active"})
    with hostile_edge(redis_server, prefix, tmp_path_factory.mktemp("hostile")) as running:
        yield running


# --- early answers ------------------------------------------------------------------------

SMALL = b"s" * 64
LARGE = b"L" * (1024 * 1024)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("after", range(len(SMALL) + 1))
def test_an_early_answer_to_a_small_upload_never_costs_the_next_customer(
    edge: Edge, after: int, chunked: bool
) -> None:
    uploader = edge.customer("uploader")
    reply = call(edge.process.port, LEGACY, f"early?after={after}", uploader, SMALL, chunked)
    assert (reply.status, reply.body) == (413, f"customer={uploader}".encode())
    edge.victim_is_served()


@pytest.mark.parametrize(
    ("pieces", "pause"), [(1, 0.0), (16, 0.02)], ids=["all-at-once", "in-16-parts"]
)
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("after", [0, 1, 65536, 300_000, len(LARGE) // 2, len(LARGE) - 1])
def test_an_early_answer_to_a_large_upload_never_costs_the_next_customer(
    edge: Edge, after: int, chunked: bool, pieces: int, pause: float
) -> None:
    uploader = edge.customer("uploader")
    target = f"early?after={after}"
    reply = call(edge.process.port, LEGACY, target, uploader, LARGE, chunked, pieces, pause)
    # edge may stop reading the upload once the answer is whole, and the client then see its
    # connection closed before the answer is read: but never another customer's answer.
    assert reply.status in (0, 413)
    if reply.status:
        assert reply.body == f"customer={uploader}".encode()
    edge.victim_is_served()


def test_an_answer_after_the_whole_upload_keeps_the_connection(edge: Edge) -> None:
    """The positive control: the checks above can see a connection carry on."""
    uploader = edge.customer("uploader")
    accepted = edge.legacy.accepted
    reply = call(edge.process.port, LEGACY, "echo", uploader, SMALL)
    assert reply.status == 200
    victim = edge.victim_is_served()
    assert edge.legacy.accepted - accepted <= 1  # at most one new connection, for both
    [upload] = edge.legacy.seen(uploader)
    assert upload.body == SMALL
    assert upload.connection == victim.connection


# --- answers on no request ------------------------------------------------------------------


def test_an_unsolicited_answer_on_an_idle_connection_reaches_no_one(edge: Edge) -> None:
    strays = edge.legacy.strays
    first = edge.customer("first")
    assert call(edge.process.port, LEGACY, "stray", first).body == f"customer={first}".encode()
    eventually(lambda: edge.legacy.strays > strays)  # it was written: the check can see it
    time.sleep(0.2)  # and it arrived at edge, on the idle connection
    edge.victim_is_served()


# --- heads that never end ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fields", "value", "interim"])
def test_a_head_over_the_limit_is_a_502_and_the_connection_is_closed(edge: Edge, kind: str) -> None:
    offered = edge.new.offered
    reply = call(edge.process.port, NEW, f"endless?kind={kind}", edge.customer("flooded"))
    assert reply.status == 502
    assert reply.headers["x-request-id"]
    # edge hung up within a little more than the limit (what the sockets' buffers held).
    assert edge.new.offered - offered < 16 * 1024 * 1024
    edge.victim_is_served(NEW)


@pytest.mark.parametrize("kind", ["fields", "value", "interim"])
def test_a_head_that_trickles_is_due_whole_within_the_read_timeout(edge: Edge, kind: str) -> None:
    target = f"endless?kind={kind}&pause=0.1&piece=16"  # ten reads a second, far from the limit
    reply = call(edge.process.port, NEW, target, edge.customer("drip"))
    assert reply.status == 504
    edge.victim_is_served(NEW)


def test_memory_stays_bounded_under_endless_heads(
    edge: Edge, redis_server: RedisServer, tmp_path: Path
) -> None:
    before = edge.process.peak_rss()
    for n in range(12):
        kind = ("fields", "value", "interim")[n % 3]
        assert call(edge.process.port, NEW, f"endless?kind={kind}", f"rss-{n}").status == 502
    grown = edge.process.peak_rss() - before
    assert grown < 16 * 1024 * 1024, f"edge grew by {grown / 2**20:.1f} MiB"
    edge.victim_is_served(NEW)


# --- answers that are not HTTP a proxy can pass on --------------------------------------------


@pytest.mark.parametrize("status", [b"000", b"099", b"600", b"999"])
def test_a_status_outside_100_to_599_is_a_502(edge: Edge, status: bytes) -> None:
    data = b"HTTP/1.1 %b Odd\r\nContent-Length: 2\r\n\r\nok" % status
    reply = call(edge.process.port, LEGACY, raw_answer(f"status-{status.decode()}", data), "odd")
    assert reply.status == 502
    edge.victim_is_served()


@pytest.mark.parametrize(("fields", "status"), [(100, 200), (101, 502)])
def test_a_head_with_more_fields_than_max_headers_is_a_502(
    edge: Edge, fields: int, status: int
) -> None:
    # Short fields, so the head stays far under max_header_bytes: the count alone decides.
    # 100 (the default max_headers, Content-Length included) is the control that passes.
    head = b"".join(b"X-F%d: v\r\n" % n for n in range(fields - 1))
    data = b"HTTP/1.1 200 OK\r\n%bContent-Length: 2\r\n\r\nok" % head
    assert len(data) < HEAD_LIMIT
    reply = call(edge.process.port, LEGACY, raw_answer(f"fields-{fields}", data), "fields")
    assert reply.status == status
    edge.victim_is_served()


BAD_FRAMINGS = {
    "length-and-chunked": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-lengths": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "list-length": b"Content-Length: 5, 5\r\n\r\nhello",
    "signed-length": b"Content-Length: +5\r\n\r\nhello",
    "space-before-colon": b"Content-Length : 5\r\n\r\nhello",
    "folded": b"X-A: a\r\n folded\r\nContent-Length: 5\r\n\r\nhello",
    "bare-lf": b"Content-Length: 5\n\nhello",
    "bad-chunk-size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-overrun": b"Transfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
    "nul-in-value": b"X-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("name", BAD_FRAMINGS)
def test_a_framing_a_proxy_could_read_two_ways_is_a_502(edge: Edge, name: str) -> None:
    data = b"HTTP/1.1 200 OK\r\n" + BAD_FRAMINGS[name]
    reply = call(edge.process.port, LEGACY, raw_answer(name, data), edge.customer("framing"))
    assert reply.status in (0, 502) or not reply.complete  # never a whole answer
    edge.victim_is_served()


def test_trailer_fields_never_join_the_head(edge: Edge) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-In-Head: yes\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer-Secret: t\r\n\r\n"
    )
    reply = call(edge.process.port, LEGACY, raw_answer("trailers", data), "trailers")
    assert (reply.status, reply.body, reply.complete) == (200, b"hello", True)
    assert reply.headers["x-in-head"] == "yes"  # the check can see a field of the head
    assert "x-trailer-secret" not in reply.headers
    edge.victim_is_served()


def test_a_portals_own_x_edge_headers_never_reach_the_client(edge: Edge) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nX-Edge-Mode: active\r\nx-edge-tenant: someone-else\r\n"
        b"X-EDGE-Anything: 1\r\nX-Edgeless: kept\r\nContent-Length: 2\r\n\r\nok"
    )
    reply = call(edge.process.port, LEGACY, raw_answer("own-headers", data), "own")
    assert reply.status == 200
    assert reply.headers["x-edgeless"] == "kept"
    assert not [name for name in reply.headers if name.startswith("x-edge-")]


# --- bodies cut short -------------------------------------------------------------------------


def test_a_body_to_the_close_cut_by_a_reset_is_cut_for_the_client(edge: Edge) -> None:
    reply = call(edge.process.port, LEGACY, "reset", edge.customer("reset"))
    assert reply.status == 200
    assert not reply.complete
    edge.victim_is_served()


def test_a_body_to_the_close_ended_cleanly_is_whole(edge: Edge) -> None:
    """The positive control: the check above can see a whole body."""
    reply = call(edge.process.port, LEGACY, "reset?clean", edge.customer("clean"))
    assert (reply.status, reply.body, reply.complete) == (200, b"r" * 5000, True)


# --- one portal hung, the other front served --------------------------------------------------


def test_a_hung_portal_holds_up_only_its_own_front(edge: Edge) -> None:
    hung: list[Reply] = []
    stuck = [
        threading.Thread(
            target=lambda n=n: hung.append(call(edge.process.port, NEW, "hang", f"hung-{n}")),
            daemon=True,
        )
        for n in range(4)
    ]
    for thread in stuck:
        thread.start()
    eventually(lambda: edge.new.open >= 1)  # its one place is held
    for _ in range(5):
        edge.victim_is_served(LEGACY)
    for thread in stuck:
        thread.join(WAIT)
    assert sorted(reply.status for reply in hung) == [504] * 4
