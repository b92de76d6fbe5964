"""The admin listener attacked as a hostile client would: every answer is the admin API's one
JSON error shape, bounded, and nothing changes that should not.

On a real edge on loopback (uvicorn configured as `edge serve` does, edge's own HTTP protocol,
the embedded store); the bulk move's guard on an admin app of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from edge.admin.api import AdminApi
from edge.admin.body import BODY_MAX, DEPTH_MAX
from edge.admin.parts import AdminParts
from edge.core.refusals import QUOTED_MAX, ChangeRefused
from edge.modes import MemoryStore, ModeCache
from edge.moves.service import Moves
from tests.support.raw import exchange, request
from tests.support.redis import unique_prefix
from tests.support.servers import ServerThread
from tests.support.settings import ADMIN_TOKEN, LEGACY_HOST
from tests.support.stack import Stack, stack

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def edge() -> Iterator[Stack]:
    with stack("memory://", unique_prefix()) as running:
        yield running


@pytest.fixture
def admin(edge: Stack) -> Iterator[httpx.Client]:
    with edge.admin() as client:
        yield client


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _is_error(response: httpx.Response, status: int) -> str:
    """The answer is the admin's JSON error with ``status``; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error, str) and error
    return error


def _mode_of(admin: httpx.Client, tenant: str) -> str:
    mode: str = admin.get(f"/api/tenants/{tenant}").raise_for_status().json()["mode"]
    return mode


# Paths


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/tenants/"),
        ("GET", "/healthz/"),
        ("GET", "/api/tenants/acme/"),
        ("PUT", "/api/tenants/acme/"),
        ("GET", "/api/openapi.json/"),
    ],
)
def test_a_trailing_slash_is_the_json_404_not_a_redirect(
    admin: httpx.Client, method: str, path: str
) -> None:
    response = admin.request(method, path, json={"mode": "setup"}, headers=AUTH)
    assert _is_error(response, 404) == f"there is nothing at {path}"
    assert "location" not in response.headers


@pytest.mark.parametrize(
    "target", [b"//api/tenants/spell", b"/API/tenants/spell", b"/api/tenants/./spell"]
)
def test_another_spelling_of_a_path_is_a_404_and_changes_nothing(
    edge: Stack, admin: httpx.Client, target: bytes
) -> None:
    body = b'{"mode": "setup"}'
    reply = exchange(_port(edge.admin_url), request(b"PUT", target, b"admin", body=body))
    assert reply.status == 404
    assert json.loads(reply.responses[0].body)["error"]
    assert _mode_of(admin, "spell") == "legacy"


def test_an_encoded_slash_reaches_the_route_and_still_needs_the_token(
    edge: Stack, admin: httpx.Client
) -> None:
    body = b'{"mode": "setup"}'
    target = b"/api%2Ftenants%2Fencoded"
    reply = exchange(_port(edge.admin_url), request(b"PUT", target, b"admin", body=body))
    assert reply.status == 401
    assert _mode_of(admin, "encoded") == "legacy"


def test_options_and_head_are_answered_as_the_routes_allow(admin: httpx.Client) -> None:
    options = admin.options("/api/tenants/acme")
    assert "OPTIONS is not allowed" in _is_error(options, 405)
    assert options.headers["allow"] == "GET, HEAD, PUT"
    head = admin.head("/api/tenants/acme")
    assert head.status_code == 200 and head.content == b""
    assert admin.head("/api/tenants:bulk").status_code == 405


@pytest.mark.parametrize(
    "tenant", ["\uff41cme", "ACME", "acme%0A", "acme%20", "%C3%A1cme", "acme."]
)
def test_a_tenant_id_is_never_normalised_into_another(admin: httpx.Client, tenant: str) -> None:
    for response in (
        admin.get(f"/api/tenants/{tenant}"),
        admin.put(f"/api/tenants/{tenant}", json={"mode": "setup"}, headers=AUTH),
    ):
        assert "is not a tenant id" in _is_error(response, 400)
    assert _mode_of(admin, "acme") == "legacy"


# Bodies


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b'{"a": ' * 100_000,
        b'{"mode": "setup", "actor": ' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"moves": ' + b"[" * (DEPTH_MAX + 1) + b"]" * (DEPTH_MAX + 1) + b"}",
    ],
)
def test_json_nested_too_deep_is_a_400(admin: httpx.Client, body: bytes) -> None:
    response = admin.put("/api/tenants/nested", content=body, headers=AUTH)
    assert _is_error(response, 400) == f"the body nests deeper than {DEPTH_MAX} levels"
    bulk = admin.post("/api/tenants:bulk", content=body, headers=AUTH)
    assert _is_error(bulk, 400) == f"the body nests deeper than {DEPTH_MAX} levels"
    assert _mode_of(admin, "nested") == "legacy"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"mode": "active", "mode": "setup"}', "the body gives the field 'mode' more than once"),
        (b'{"mode": "setup", "force": false, "force": true}', "'force' more than once"),
        (b'{"mode": "setup", "force": NaN}', "the body must be JSON"),
        (b'{"mode": "setup", "force": Infinity}', "the body must be JSON"),
        (b'{"mode": "setup", "force": 1e999}', "force: input should be a valid boolean"),
        (b'{"mode": "setup", "force": ' + b"9" * 4000 + b"}", "force: input should be a valid"),
        (b'{"mode": "setup", "force": ' + b"9" * 5000 + b"}", "the body must be JSON"),
    ],
)
def test_json_read_two_ways_or_not_json_is_a_400(
    admin: httpx.Client, body: bytes, says: str
) -> None:
    response = admin.put("/api/tenants/twice", content=body, headers=AUTH)
    assert says in _is_error(response, 400)
    assert _mode_of(admin, "twice") == "legacy"


def test_a_body_over_the_limit_is_a_413_before_it_is_read(edge: Stack) -> None:
    # Only the head is sent: the answer comes without edge waiting for the body it announces.
    headers = b"authorization: Bearer %s\r\ncontent-length: %d\r\n%s" % (
        ADMIN_TOKEN.encode(),
        2 * BODY_MAX,
        b"content-type: application/x-www-form-urlencoded\r\n",
    )
    for target in (b"/api/tenants/big", b"/api/tenants:bulk", b"/login"):
        method = b"PUT" if target.endswith(b"big") else b"POST"
        head = request(method, target, b"admin", headers).replace(b"content-length: 0\r\n", b"")
        reply = exchange(_port(edge.admin_url), head)
        assert reply.status == 413
        assert reply.header(b"content-type") == b"application/json"
        assert json.loads(reply.responses[0].body) == {
            "error": f"the body is larger than the admin listener accepts ({BODY_MAX} bytes)"
        }
        assert reply.closed


def test_the_document_names_the_413_of_every_route_with_a_body(admin: httpx.Client) -> None:
    paths = admin.get("/api/openapi.json").json()["paths"]
    operations = [op for item in paths.values() for op in item.values() if "responses" in op]
    with_body = [op for op in operations if "requestBody" in op]
    assert len(with_body) == 3
    assert all("413" in op["responses"] for op in with_body)
    assert not any("413" in op["responses"] for op in operations if op not in with_body)


def test_a_chunked_body_is_refused_once_it_passes_the_limit(
    admin: httpx.Client,
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(BODY_MAX // 4096 + 1):
            yield b" " * 4096
        yield b'{"mode": "setup"}'

    response = admin.put("/api/tenants/chunked", content=chunks(), headers=AUTH)
    assert "larger than the admin listener accepts" in _is_error(response, 413)
    login = admin.post(
        "/login", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    _is_error(login, 413)
    assert _mode_of(admin, "chunked") == "legacy"


def test_a_body_within_the_limit_is_read(admin: httpx.Client) -> None:
    body = b'{"mode": "setup"}'
    padded = b" " * (BODY_MAX - len(body)) + body
    response = admin.put("/api/tenants/padded", content=padded, headers=AUTH)
    assert response.status_code == 200
    assert _mode_of(admin, "padded") == "setup"


# What errors quote


def test_values_quoted_in_errors_are_cut(admin: httpx.Client) -> None:
    long = "x" * 100_000
    answers = [
        admin.put("/api/tenants/quoted", json={"mode": long}, headers=AUTH),
        admin.put("/api/tenants/quoted", json={"mode": "setup", "actor": [long]}, headers=AUTH),
        admin.post(
            "/api/tenants/quoted/schedule", json={"mode": "active", "at": long}, headers=AUTH
        ),
        admin.get("/api/tenants", params={"cursor": "9" * 4000}),
        admin.get("/api/tenants", params={"q": "x" * 4000}),
        admin.get("/api/tenants", params={"limit": "9" * 4000}),
        admin.get("/api/tenants/" + "a" * 4000),
        admin.delete("/api/schedules/" + "s" * 4000, headers=AUTH),
    ]
    for response in answers:
        error = _is_error(response, 404 if response.request.method == "DELETE" else 400)
        assert "…" in error and len(error) < QUOTED_MAX + 120, error
    bulk = admin.post(
        "/api/tenants:bulk", json={"moves": [{"tenant": "acme", "mode": long}]}, headers=AUTH
    )
    _is_error(bulk, 409)
    [problem] = bulk.json()["problems"]
    assert "…" in problem["reason"] and len(problem["reason"]) < QUOTED_MAX + 60
    assert _mode_of(admin, "quoted") == "legacy"


# What ends up in the audit log


@pytest.mark.parametrize(
    "actor",
    [
        "alice\nbob: acme-gym active → legacy",
        "alice\rbob",
        "ali\x00ce",
        "alice\x1b[2K",
        "alice\u2028bob",
        "\u202ealice",
        "alice\x85bob",
    ],
)
def test_an_actor_with_control_characters_is_refused(admin: httpx.Client, actor: str) -> None:
    for response in (
        admin.put("/api/tenants/forged", json={"mode": "setup", "actor": actor}, headers=AUTH),
        admin.post(
            "/api/tenants:bulk",
            json={"tenants": ["forged"], "mode": "setup", "actor": actor},
            headers=AUTH,
        ),
        admin.post(
            "/api/tenants/forged/schedule",
            json={"mode": "setup", "at": "2099-01-01T00:00:00Z", "actor": actor},
            headers=AUTH,
        ),
    ):
        assert "actor: " in _is_error(response, 400)
        assert "has a control character" in response.json()["error"]
    assert _mode_of(admin, "forged") == "legacy"
    assert admin.get("/api/tenants/forged/history").json()["history"] == []
    assert admin.get("/api/schedules", params={"tenant": "forged"}).json()["schedules"] == []


def test_an_actor_in_plain_text_is_recorded(admin: httpx.Client) -> None:
    actor = "Zoë O'Brien (ops)"
    moved = admin.put("/api/tenants/plain", json={"mode": "setup", "actor": actor}, headers=AUTH)
    assert moved.status_code == 200
    [entry] = admin.get("/api/tenants/plain/history").json()["history"]
    assert entry["actor"] == actor


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-14:00", "9999-12-31T23:00:00-01:00"])
def test_a_schedule_past_the_last_instant_is_a_400_not_a_500(admin: httpx.Client, at: str) -> None:
    response = admin.post(
        "/api/tenants/far/schedule", json={"mode": "setup", "at": at}, headers=AUTH
    )
    assert _is_error(response, 400) == f"at: '{at}' is after 9999-12-31T23:59:59Z, the last instant"
    assert admin.get("/api/schedules", params={"tenant": "far"}).json()["schedules"] == []


# Refusals before the app: edge's HTTP protocol


_UNREADABLE = {
    "request line": (b"GARBAGE\r\n\r\n", 400),
    "header line": (b"GET /healthz HTTP/1.1\r\nhost: a\r\nno colon here\r\n\r\n", 400),
    "target too long": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nhost: a\r\n\r\n", 414),
    "head too large": (b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"b" * 80_000 + b"\r\n\r\n", 431),
    "absolute target": (b"GET http://elsewhere/healthz HTTP/1.1\r\nhost: a\r\n\r\n", 400),
}


_PAGE = b"text/html; charset=utf-8"


@pytest.mark.parametrize("name", list(_UNREADABLE))
def test_refusals_before_the_app_are_the_json_error_on_the_admin_listener(
    edge: Stack, name: str
) -> None:
    data, status = _UNREADABLE[name]
    admin = exchange(_port(edge.admin_url), data)
    assert admin.status == status and admin.closed
    assert admin.header(b"content-type") == b"application/json"
    assert set(json.loads(admin.responses[0].body)) == {"error"}
    # The public listener keeps its own: uvicorn's words for what llhttp cannot read, else
    # edge's refusal page.
    public = exchange(
        _port(edge.public_url), data.replace(b"host: a", b"host: " + LEGACY_HOST.encode())
    )
    assert public.status == status
    assert public.header(b"content-type") in (
        b"text/plain; charset=utf-8",
        b"text/html; charset=utf-8",
    )


@pytest.mark.parametrize("target", [b"/api/tenants", b"/", b"/nothing"])
def test_a_websocket_handshake_gets_the_json_error(edge: Stack, target: bytes) -> None:
    upgrade = (
        b"upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    reply = exchange(_port(edge.admin_url), request(b"GET", target, b"admin", upgrade, close=False))
    assert reply.status == 404
    assert reply.header(b"content-type") == b"application/json"
    path = target.decode()
    assert json.loads(reply.responses[0].body) == {
        "error": f"there is no WebSocket at {path}",
        "path": path,
    }


# Bulk moves are checked whole, then made one by one


def test_a_bulk_activation_the_guard_refuses_for_one_tenant_moves_the_others() -> None:
    async def guard(tenant: str) -> str:
        if tenant == "not-ready":
            raise ChangeRefused(f"{tenant}: too few deep links resolve")
        return "ready"

    store = MemoryStore()
    parts = AdminParts.of(store, Moves(store, guard=guard))
    app = AdminApi(parts, ModeCache(store), ADMIN_TOKEN).app()
    moves = {"tenants": ["ready-one", "not-ready", "ready-two"], "mode": "active"}
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as admin:
        response = admin.post("/api/tenants:bulk", json=moves, headers=AUTH)
        assert response.status_code == 200
        body = response.json()
        assert body["summary"] == {"moved": 2, "unchanged": 0, "refused": 1}
        results = {result["tenant"]: result for result in body["results"]}
        assert results["not-ready"]["result"] == "refused"
        assert "too few deep links" in results["not-ready"]["reason"]
        assert [_mode_of(admin, t) for t in moves["tenants"]] == ["active", "legacy", "active"]
