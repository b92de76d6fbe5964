"""Setup mode is read-only, whatever the request looks like: a property test on real HTTP.

Hypothesis writes raw requests (methods in any spelling, paths with every encoding trick,
method override headers) to the whole router on loopback. Whatever edge forwards to the new
portal must be, as the most lenient backend would read it: a read, or the exact allow-listed
write, or a write for an active tenant; for the tenant edge named in X-Edge-Tenant; with no
method override header left on it.
"""

from __future__ import annotations

import posixpath
import unicodedata
from collections.abc import Iterable, Iterator
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edge.core.http import METHOD_OVERRIDE_HEADERS
from tests.support.raw import exchange, request
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.settings import NEW_HOST
from tests.support.stack import Seen, Stack, stack

SETUP, ACTIVE, LEGACY = "swim", "dance", "acme"  # acme has no key: legacy
ALLOWED_WRITE = (
    "POST",
    f"/{SETUP}/staff/login",
)  # the stack's setup_allow (tests.support.settings)
READS = frozenset({"GET", "HEAD", "OPTIONS"})

METHODS = [
    *("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE", "CONNECT"),
    *("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "REPORT"),
    *("PURGE", "LINK", "UNLINK", "QUERY", "MKCALENDAR", "ACL", "BIND", "REBIND", "SOURCE"),
    *("get", "Get", "post", "gEt", "FOO", "GETS", "HEADX", "BREW", "M-SEARCH", "PRI"),
]
TENANTS = [SETUP, ACTIVE, LEGACY]
# Ways to write a tenant segment so that edge and a backend might not read the same tenant.
TENANT_SPELLINGS = ["%73wim", "%64ance", "SWIM", "Swim", "swim;x=1", "swim%3b", "", "\uff53wim"]
# Ways to step up one segment, or to look like a separator, in some backend's eyes.
CLIMBS = [
    *("/..", "/../", "/..;", "/..;x=1", "/.", "/%2e%2e", "/%2E%2E", "/.%2e", "/%2e."),
    *("/%252e%252e", "/%25252e%25252e", "%2f..", "%2F..", "\\..", "%5c..", "/..%2f", "/..%5c"),
    *("/\uff0e\uff0e", "/%ef%bc%8e%ef%bc%8e", "%ef%bc%8f..", "\uff0f..", "/%c0%ae%c0%ae"),
    *("//..", "/..%00", "/..%09", "%252f..", "/x/../.."),
]
ACTIONS = [
    *("checkout", "staff/login", "staff/%6cogin", "staff/Login", "staff/login/", "staff//login"),
    *("staff/login;x=1", "staff/./login", "staff/x/../login", "staff/login%3b", "staff%2flogin"),
    *("staff/login%00", "staff/login%20", "staff/login.json", "%73taff/login", "classes/7/enroll"),
]
SEGMENTS = [
    *(SETUP, ACTIVE, LEGACY, "staff", "login", "Login", "%6cogin", "LOGIN", "checkout"),
    *(".", "..", "%2e", "%2e%2e", "%2E%2E", ".%2e", "%252e%252e", "%25252e", "..;", ".;x"),
    *(";", ";x=1", "login;x=1", "%3b", "%00", "%0d%0a", "%09", "@evil.test", ":", "%3f", "%23"),
    *("%ef%bc%8e%ef%bc%8e", "\uff0e\uff0e", "%c0%ae%c0%ae", "%2f", "%5c", "%252f", "a%2fb"),
    *("", "x.json", "~", "%7e", "%20", "+"),
]
SEPARATORS = ["/", "/", "/", "//", "\\", "%2f", "%2F", "%5c", "/./", "/../", "\uff0f"]
OVERRIDE_NAMES = [
    *("X-HTTP-Method-Override", "x-http-method", "X-Method-Override", "X-Original-Method"),
    "X-HTTP-METHOD-OVERRIDE",
]
OVERRIDE_VALUES = ["DELETE", "delete", "PUT", "PATCH", "POST", "GET", " GET", "GET, DELETE", ""]
FORGED = [
    f"X-Edge-Mode: active\r\nX-Edge-Tenant: {ACTIVE}\r\n",
    f"X-Forwarded-Host: evil.test\r\nForwarded: host=evil.test\r\nX-Tenant: {ACTIVE}\r\n",
]

tenant_segments = st.sampled_from(TENANTS) | st.sampled_from(TENANT_SPELLINGS)
queries = st.sampled_from(["", "", "?x=1", "?_method=DELETE", "?a=%2f..%2f", "?"])
# Aimed: a tenant, a climb out of it, maybe another tenant, then a write worth blocking.
aimed_paths = st.builds(
    lambda first, climbs, second, action, query: (
        f"/{first}{''.join(climbs)}/{second}/{action}" + query
    ),
    tenant_segments,
    st.lists(st.sampled_from(CLIMBS), min_size=1, max_size=3),
    tenant_segments,
    st.sampled_from(ACTIONS),
    queries,
)
# Scattered: any pieces joined by anything that might read as a separator.
scattered_paths = st.builds(
    lambda first, rest, query: "/" + first + "".join(sep + seg for sep, seg in rest) + query,
    tenant_segments,
    st.lists(st.tuples(st.sampled_from(SEPARATORS), st.sampled_from(SEGMENTS)), max_size=5),
    queries,
)
paths = (
    aimed_paths
    | scattered_paths
    | st.builds(
        lambda tenant, action, query: f"/{tenant}/{action}{query}",
        st.sampled_from(TENANTS),
        st.sampled_from(ACTIONS),
        queries,
    )
)
headers = st.builds(
    lambda overrides, forged: (
        "".join(f"{name}: {value}\r\n" for name, value in overrides) + "".join(forged)
    ),
    st.lists(st.tuples(st.sampled_from(OVERRIDE_NAMES), st.sampled_from(OVERRIDE_VALUES))),
    st.lists(st.sampled_from(FORGED), max_size=2),
)


def as_a_lenient_backend_reads(raw_path: str) -> str:
    """The path a forgiving backend would route on: decoded twice, Unicode-normalised, back
    slashes as slashes, ";params" dropped, dot segments resolved, empty segments folded."""
    path = unquote(unquote(raw_path))
    path = unicodedata.normalize("NFKC", path).replace("\\", "/")
    return _resolved(segment.partition(";")[0] for segment in path.split("/"))


def as_a_raw_router_reads(raw_path: str) -> str:
    """The path a backend that routes on the path as sent would see: split on "/" first, dot
    segments resolved, ";params" dropped, then each segment decoded ("%2f" stays inside)."""
    resolved = _resolved(segment.partition(";")[0] for segment in raw_path.split("/"))
    return "/".join(unquote(segment).replace("/", "%2F") for segment in resolved.split("/"))


def _resolved(segments: Iterable[str]) -> str:
    return posixpath.normpath("/" + "/".join(segment for segment in segments if segment))


def violation(seen: Seen) -> str | None:
    """What is wrong with a request having reached the new portal, if anything."""
    if any(name in METHOD_OVERRIDE_HEADERS for name, _ in seen.headers):
        return "a method override header reached the backend"
    judged = seen.header("x-edge-tenant")
    for path in (as_a_lenient_backend_reads(seen.path), as_a_raw_router_reads(seen.path)):
        tenant = path[1:].partition("/")[0]
        if tenant != judged:
            return f"edge judged tenant {judged!r}, a backend reads {path!r}"
        if not (seen.method in READS or tenant == ACTIVE or (seen.method, path) == ALLOWED_WRITE):
            return f"a {seen.method} reached the new portal for {tenant!r} ({path!r})"
    return None


@pytest.fixture(scope="module")
def edge(redis_server: RedisServer) -> Iterator[Stack]:
    prefix = prefix_with_modes(redis_server, {SETUP: "setup", ACTIVE: "active"})
    with stack(redis_server.url, prefix) as running:
        yield running


def edge_port(edge: Stack) -> int:
    return int(edge.public_url.rsplit(":", 1)[1])


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(METHODS),
    path=paths,
    extra=headers,
    host=st.sampled_from([NEW_HOST, NEW_HOST.upper(), f"{NEW_HOST}:80"]),
    absolute=st.booleans(),
    body=st.sampled_from([b"", b"pay=1"]),
)
def test_nothing_but_reads_and_allowed_writes_reach_the_preview(
    edge: Stack, method: str, path: str, extra: str, host: str, absolute: bool, body: bytes
) -> None:
    target = (f"http://{NEW_HOST}" if absolute else "") + path
    before = len(edge.new.seen)
    reply = exchange(
        edge_port(edge),
        request(method.encode(), target.encode(), host.encode(), extra.encode(), body),
    )
    assert reply.closed, "a request that says Connection: close is answered and closed"
    event(f"answered {reply.statuses[:1]}")
    assert len(edge.legacy.seen) == 0, "the new front never forwards to the legacy portal"
    for seen in edge.new.seen[before:]:
        event(f"forwarded a {'read' if seen.method in READS else 'write'}")
        assert violation(seen) is None, violation(seen)


@pytest.mark.parametrize("climb", CLIMBS)
def test_no_way_of_climbing_out_of_a_tenant_reaches_another(edge: Stack, climb: str) -> None:
    """Each climb, deterministically: out of the active tenant into the preview (a write would
    land on the setup tenant), and out of the preview into a tenant not enabled (a read would
    show a portal that is not open)."""
    before = len(edge.new.seen)
    for method, first, second, action in [
        ("POST", ACTIVE, SETUP, "checkout"),
        ("DELETE", ACTIVE, SETUP, "staff/login"),
        ("POST", SETUP, SETUP, "staff/login"),
        ("GET", SETUP, LEGACY, "classes"),
    ]:
        path = f"/{first}{climb}/{second}/{action}".encode()
        reply = exchange(edge_port(edge), request(method.encode(), path, NEW_HOST.encode()))
        assert reply.closed and reply.statuses
    for seen in edge.new.seen[before:]:
        assert violation(seen) is None, violation(seen)


@pytest.mark.parametrize("action", ACTIONS)
def test_only_the_allowed_write_itself_passes_in_any_spelling(edge: Stack, action: str) -> None:
    before = len(edge.new.seen)
    path = f"/{SETUP}/{action}".encode()
    for method, override in [
        (b"POST", b""),
        (b"PUT", b""),
        (b"PUT", b"X-HTTP-Method-Override: POST\r\n"),
        (b"DELETE", b"X-Method-Override: POST\r\n"),
        (b"POST", b"X-HTTP-Method: DELETE\r\n"),
    ]:
        data = request(method, path, NEW_HOST.encode(), override, body=b"x=1")
        reply = exchange(edge_port(edge), data)
        assert reply.closed and reply.statuses
    for seen in edge.new.seen[before:]:
        assert violation(seen) is None, violation(seen)


def test_the_checker_names_what_must_never_reach_the_preview() -> None:
    setup, active = [("x-edge-tenant", SETUP)], [("x-edge-tenant", ACTIVE)]
    cases = [
        (Seen("DELETE", "/swim/x", "", setup, b""), "a DELETE reached the new portal for 'swim'"),
        (Seen("POST", "/dance/..;/swim/pay", "", active, b""), "a backend reads '/swim/pay'"),
        (Seen("GET", "/dance%2fx/", "", active, b""), "a backend reads '/dance%2Fx'"),
        (
            Seen("POST", "/swim/staff/login", "", [*setup, ("x-http-method", "PUT")], b""),
            "a method override header reached the backend",
        ),
        (Seen("POST", "/swim/staff/%6cogin", "", setup, b""), None),
        (Seen("PUT", "/dance/x", "", active, b""), None),
    ]
    for seen, problem in cases:
        found = violation(seen)
        assert found is None if problem is None else problem in (found or ""), (seen, found)
