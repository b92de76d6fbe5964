"""Redirects go only where configured: open-redirect payloads against the real router.

Every redirect edge answers must point at the configured portal: its Location starts with the
configured public_url and "/", and parses to the configured host, whatever the request's path
or query held. A request edge cannot redirect safely is refused instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import pytest

from tests.support.raw import Reply, exchange, request
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.settings import LEGACY_HOST, NEW_HOST
from tests.support.stack import Stack, stack

ACTIVE, NOT_ENABLED = "dance", "acme"
NEW_PUBLIC = f"https://{NEW_HOST}"  # the stack's [new].public_url (tests.support.settings)
LEGACY_PUBLIC = f"https://{LEGACY_HOST}"

# Paths under the active tenant, as raw request targets.
PATHS = [
    *("//evil.test", "///evil.test", "/\\evil.test", "/\\\\evil.test", "/%2f%2fevil.test"),
    *("/%2F%2Fevil.test", "/%5c%5cevil.test", "/@evil.test", "/%40evil.test", ":@evil.test"),
    *("/..%2f..%2fevil.test", "/../../evil.test", "/%2e%2e/%2e%2e/evil.test", "/%09/evil.test"),
    *("/%0d%0aLocation:%20https://evil.test", "/%00evil.test", "/%e2%80%aeevil.test"),
    *("/\uff0f\uff0fevil.test", "/%ef%bc%8f%ef%bc%8fevil.test", "/%ef%bc%bcevil.test"),
    *("/https://evil.test", "/https:evil.test", "/%68ttps://evil.test", "/;@evil.test"),
    *("/classes//evil.test", "/classes/%2f%2fevil.test", "/classes/..%2f..%2f..%2fevil.test"),
    *("/classes/\\evil.test", "/classes/.evil.test", "#@evil.test", "/x#//evil.test"),
    *("/x?next=//evil.test", "/x?next=https://evil.test", "/x?%0d%0aLocation:%20//evil.test"),
    *("/x?q=a\\b", '/x?q="><script>', "/x?%ff", "/x?q=%u002f%u002f"),
    *("/x?q=\tb", "/x\t/evil.test", "/x?\r\nLocation: https://evil.test"),
]


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer) -> Iterator[Stack]:
    prefix = prefix_with_modes(redis_server, {ACTIVE: "active"})
    with stack(redis_server.url, prefix) as running:
        yield running


def send(edge: Stack, method: bytes, target: str, host: str) -> Reply:
    port = int(edge.public_url.rsplit(":", 1)[1])
    return exchange(port, request(method, target.encode(), host.encode()))


def assert_stays_on(location: bytes, public_url: str) -> None:
    text = location.decode("ascii")  # a Location edge builds is ASCII, percent-encoded
    assert text.startswith(public_url + "/"), text
    assert not any(c.isspace() or c == "\\" or ord(c) < 0x20 for c in text), text
    host = urlsplit(public_url).hostname
    assert urlsplit(text).hostname == host, text
    assert urlsplit(urljoin("https://elsewhere.test/a/b", text)).hostname == host, text


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", [b"GET", b"POST"])
def test_a_legacy_url_redirects_only_to_the_configured_new_portal(
    edge: Stack, path: str, method: bytes
) -> None:
    reply = send(edge, method, f"/{ACTIVE}{path}", LEGACY_HOST)
    assert reply.statuses, "every request gets an answer"
    if reply.status in (400, 404):
        assert reply.header(b"location") is None
    else:
        assert reply.status == (302 if method == b"GET" else 307)
        location = reply.header(b"location")
        assert location is not None and reply.data.count(b"\r\nlocation:") == 1
        assert_stays_on(location, NEW_PUBLIC)
    assert edge.reached_backend() == 0


@pytest.mark.parametrize("path", PATHS)
def test_a_tenant_not_yet_enabled_is_sent_to_its_legacy_home_only(edge: Stack, path: str) -> None:
    reply = send(edge, b"GET", f"/{NOT_ENABLED}{path}", NEW_HOST)
    assert reply.statuses
    if reply.status not in (400, 404):
        assert reply.status == 302
        assert reply.header(b"location") == f"{LEGACY_PUBLIC}/{NOT_ENABLED}/".encode()
    assert edge.reached_backend() == 0


def test_the_payloads_are_answered_as_redirects_where_they_can_be(edge: Stack) -> None:
    """So that the table above is not vacuous: harmless-looking payloads are redirected."""
    redirected = [
        path for path in PATHS if send(edge, b"GET", f"/{ACTIVE}{path}", LEGACY_HOST).status == 302
    ]
    assert len(redirected) >= len(PATHS) // 2, redirected
    reply = send(edge, b"GET", f"/{ACTIVE}/classes//evil.test?next=//evil.test", LEGACY_HOST)
    assert reply.header(b"location") == (
        f"{NEW_PUBLIC}/{ACTIVE}/schedule/evil.test?next=//evil.test".encode()
    )
