"""Forwarding headers through the whole router: who the client is, which Host the portal gets,
and how a portal's Location and Set-Cookie reach the public side."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest

from edge.config import FrontSettings
from edge.core.asgi import Receive, Scope, Send
from edge.forwarding.headers import Backend
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.servers import ServerThread
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for
from tests.support.stack import RecordingBackend, Seen, Stack, run_edge

ACTIVE, LEGACY = "dance", "acme"  # acme has no key: legacy
FORGED = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("Forwarded", "for=6.6.6.6;proto=https;host=evil.test"),
    ("X-Real-IP", "6.6.6.6"),
]


class AnsweringBackend:
    """A RecordingBackend whose answer carries the response headers the request asks for, as
    JSON pairs in X-Answer; "{self}" stands for the backend's own URL. A Location makes it 302."""

    def __init__(self, name: str) -> None:
        self.recording = RecordingBackend(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asked = dict(scope["headers"]).get(b"x-answer") if scope["type"] == "http" else None
        if asked is None:
            return await self.recording(scope, receive, send)
        host, port = scope["server"]
        pairs = [(k, v.replace("{self}", f"http://{host}:{port}")) for k, v in json.loads(asked)]
        extra = [(k.lower().encode(), v.encode()) for k, v in pairs]
        status = 302 if any(k == b"location" for k, _ in extra) else 200

        async def answer(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "status": status, "headers": [*message["headers"], *extra]}
            await send(message)

        await self.recording(scope, receive, answer)


@contextmanager
def answering_stack(redis: RedisServer, **sections: dict[str, Any]) -> Iterator[Stack]:
    prefix = prefix_with_modes(redis, {ACTIVE: "active"})
    legacy, new = AnsweringBackend("legacy"), AnsweringBackend("new")
    with ExitStack() as running:
        legacy_url = running.enter_context(ServerThread(legacy)).url
        new_url = running.enter_context(ServerThread(new)).url
        raw = settings_for(legacy_url, new_url, redis.url, prefix, **sections)
        app, public_url, admin_url = running.enter_context(run_edge(raw))
        yield Stack(app, public_url, admin_url, legacy.recording, new.recording)


@pytest.fixture(scope="module")
def plain(redis_server: RedisServer) -> Iterator[Stack]:
    """Defaults: no trusted proxy, the client's Host kept, backend headers passed as they are."""
    with answering_stack(redis_server) as running:
        yield running


@pytest.fixture(scope="module")
def behind_a_proxy(redis_server: RedisServer) -> Iterator[Stack]:
    """The tests' loopback client is a trusted proxy; the new front rewrites toward the public."""
    new = {"host_header": "backend", "rewrite_location": True, "cookie_domain": NEW_HOST}
    with answering_stack(
        redis_server, server={"trusted_proxies": ["127.0.0.0/8"]}, new=new
    ) as running:
        yield running


def last_seen(edge: Stack, path: str, host: str, headers: list[tuple[str, str]]) -> Seen:
    with edge.client() as client:
        response = client.get(path, headers=[("Host", host), *headers])
    assert response.status_code == 200
    return (edge.new if host == NEW_HOST else edge.legacy).seen[-1]


def all_values(seen: Seen, name: str) -> list[str]:
    return [value for key, value in seen.headers if key == name]


def answer(edge: Stack, path: str, host: str, pairs: list[tuple[str, str]]) -> httpx.Response:
    with edge.client() as client:
        return client.get(path, headers={"Host": host, "X-Answer": json.dumps(pairs)})


def test_forwarding_headers_from_a_stranger_are_replaced(plain: Stack) -> None:
    seen = last_seen(plain, f"/{LEGACY}/", LEGACY_HOST, FORGED)
    assert all_values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert all_values(seen, "x-forwarded-proto") == ["http"]
    assert all_values(seen, "x-forwarded-host") == [LEGACY_HOST]
    assert all_values(seen, "forwarded") == []
    assert all_values(seen, "x-real-ip") == []
    assert all_values(seen, "host") == [LEGACY_HOST]


def test_a_trusted_proxy_is_believed_and_both_chains_are_extended(
    behind_a_proxy: Stack,
) -> None:
    seen = last_seen(behind_a_proxy, f"/{LEGACY}/", LEGACY_HOST, FORGED)
    assert all_values(seen, "x-forwarded-for") == ["6.6.6.6, 127.0.0.1"]
    assert all_values(seen, "x-forwarded-proto") == ["https"]
    assert all_values(seen, "x-forwarded-host") == ["evil.test"]
    assert all_values(seen, "forwarded") == [
        "for=6.6.6.6;proto=https;host=evil.test, for=127.0.0.1"
    ]
    assert all_values(seen, "x-real-ip") == ["6.6.6.6"]


def test_a_proxy_that_speaks_only_rfc_7239_is_understood(behind_a_proxy: Stack) -> None:
    forwarded = [("Forwarded", 'for="[2001:db8::7]:4711";proto=https;host=portal.example')]
    seen = last_seen(behind_a_proxy, f"/{LEGACY}/", LEGACY_HOST, forwarded)
    assert all_values(seen, "x-forwarded-for") == ["2001:db8::7, 127.0.0.1"]
    assert all_values(seen, "x-forwarded-proto") == ["https"]
    assert all_values(seen, "x-forwarded-host") == ["portal.example"]
    assert all_values(seen, "forwarded") == [
        'for="[2001:db8::7]:4711";proto=https;host=portal.example, for=127.0.0.1'
    ]


def test_a_forwarded_element_without_an_address_adds_no_hop(behind_a_proxy: Stack) -> None:
    seen = last_seen(behind_a_proxy, f"/{LEGACY}/", LEGACY_HOST, [("Forwarded", "proto=https")])
    assert all_values(seen, "x-forwarded-for") == ["127.0.0.1"]
    assert all_values(seen, "x-forwarded-proto") == ["https"]
    assert all_values(seen, "forwarded") == ["proto=https, for=127.0.0.1"]


def test_the_portal_gets_the_clients_host_unless_configured_otherwise(
    plain: Stack, behind_a_proxy: Stack
) -> None:
    kept = last_seen(plain, f"/{ACTIVE}/", NEW_HOST, [])
    assert all_values(kept, "host") == [NEW_HOST]
    rewritten = last_seen(behind_a_proxy, f"/{ACTIVE}/", NEW_HOST, [])
    new_backend = behind_a_proxy.edge.settings.new.backend
    assert all_values(rewritten, "host") == [new_backend.removeprefix("http://")]
    assert all_values(rewritten, "x-forwarded-host") == [NEW_HOST]
    legacy = last_seen(behind_a_proxy, f"/{LEGACY}/", LEGACY_HOST, [])
    assert all_values(legacy, "host") == [LEGACY_HOST], "host_header is per front"


@pytest.mark.parametrize(
    ("location", "public"),
    [
        ("{self}/dance/next?step=2", f"https://{NEW_HOST}/dance/next?step=2"),
        ("{self}", f"https://{NEW_HOST}"),
        ("{self}?a=1", f"https://{NEW_HOST}?a=1"),
        ("{self}#top", f"https://{NEW_HOST}#top"),
        ("/dance/relative", "/dance/relative"),
        ("https://pay.example/checkout", "https://pay.example/checkout"),
        ("{self}0/elsewhere", "{self}0/elsewhere"),
        ("{self}@evil.test/x", "{self}@evil.test/x"),
    ],
)
def test_a_location_at_the_backend_points_at_the_public_url(
    behind_a_proxy: Stack, plain: Stack, location: str, public: str
) -> None:
    own = behind_a_proxy.edge.settings.new.backend
    response = answer(behind_a_proxy, f"/{ACTIVE}/go", NEW_HOST, [("Location", location)])
    assert response.status_code == 302
    assert response.headers["location"] == public.replace("{self}", own)
    untouched = answer(plain, f"/{ACTIVE}/go", NEW_HOST, [("Location", location)])
    assert untouched.headers["location"] == location.replace(
        "{self}", plain.edge.settings.new.backend
    )


def test_a_location_points_at_the_tenants_own_public_url(redis_server: RedisServer) -> None:
    """A front whose public URL names the tenant: each tenant's Locations get its own."""
    new = {
        "hosts": [f"*.{NEW_HOST}"],
        "tenant": "subdomain",
        "public_url": f"https://{{tenant}}.{NEW_HOST}",
        "rewrite_location": True,
    }
    with answering_stack(redis_server, new=new) as running:
        response = answer(running, "/go", f"{ACTIVE}.{NEW_HOST}", [("Location", "{self}/next")])
    assert response.status_code == 302
    assert response.headers["location"] == f"https://{ACTIVE}.{NEW_HOST}/next"


def test_set_cookie_domains_are_rewritten_and_every_cookie_kept(behind_a_proxy: Stack) -> None:
    cookies = [
        ("Set-Cookie", "session=abc; Domain=127.0.0.1; Path=/; HttpOnly"),
        ("Set-Cookie", "theme=dark; Path=/; domain=.internal"),
        ("Set-Cookie", "host_only=1; Path=/"),
    ]
    response = answer(behind_a_proxy, f"/{ACTIVE}/", NEW_HOST, cookies)
    assert response.headers.get_list("set-cookie") == [
        f"session=abc; Domain={NEW_HOST}; Path=/; HttpOnly",
        f"theme=dark; Path=/; Domain={NEW_HOST}",
        "host_only=1; Path=/",
    ]
    legacy = answer(behind_a_proxy, f"/{LEGACY}/", LEGACY_HOST, cookies)
    assert legacy.headers.get_list("set-cookie") == [value for _, value in cookies]


@pytest.mark.parametrize(
    ("backend", "location", "rewritten"),
    [
        ("http://portal.internal", "http://portal.internal:80/x", "https://portal.example/x"),
        ("http://portal.internal", "HTTP://Portal.Internal/x", "https://portal.example/x"),
        ("http://portal.internal:8000", "//portal.internal:8000/x", "https://portal.example/x"),
        ("http://portal.internal:8000", "http://portal.internal/x", None),
        ("https://portal.internal", "https://portal.internal:443/x?y", "https://portal.example/x?y"),
        ("http://portal.internal:8000/base", "http://portal.internal:8000/base/x", "https://portal.example/x"),
        ("http://portal.internal:8000/base", "http://portal.internal:8000/basement", None),
        ("http://[::1]:8000", "http://[::1]:8000/x", "https://portal.example/x"),
        ("http://portal.internal", "https://portal.internal/x", None),
        ("http://portal.internal", "http://portal.internal.evil.test/x", None),
    ],
)  # fmt: skip
def test_which_locations_count_as_the_backends_own(
    backend: str, location: str, rewritten: str | None
) -> None:
    front = FrontSettings(
        hosts=("portal.example",),
        backend=backend,
        public_url="https://portal.example",
        rewrite_location=True,
    )
    rewrite = Backend.from_settings(front).rewrite
    assert rewrite is not None
    (header,) = rewrite.apply([(b"location", location.encode())])
    assert header == (b"location", (rewritten or location).encode())


def test_a_subdomain_portal_gets_its_tenants_public_url() -> None:
    front = FrontSettings(
        hosts=("*.portal.example",),
        backend="http://portal.internal",
        public_url="https://{tenant}.portal.example",
        tenant="subdomain",
        rewrite_location=True,
    )
    backend = Backend.from_settings(front).for_tenant("acme")
    assert backend.rewrite is not None
    (header,) = backend.rewrite.apply([(b"location", b"http://portal.internal/classes")])
    assert header == (b"location", b"https://acme.portal.example/classes")
    plain = Backend.from_settings(front.model_copy(update={"rewrite_location": False}))
    assert plain.rewrite is None and plain.for_tenant("acme") is plain


def test_a_cookie_domain_must_be_a_domain() -> None:
    base = {"hosts": ["portal.example"], "backend": "http://b", "public_url": "https://p"}
    assert FrontSettings.model_validate({**base, "cookie_domain": "Portal.Example"}).cookie_domain
    for bad in ["*.portal.example", "portal.example:443", ".portal.example", "a b"]:
        with pytest.raises(ValueError, match="cookie_domain"):
            FrontSettings.model_validate({**base, "cookie_domain": bad})
