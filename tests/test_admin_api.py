"""The admin API over real HTTP, on a real edge with a real redis-server.

Every answer these tests receive is also checked against the OpenAPI document: its status
must be documented for the route, and its JSON must match the documented schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from edge import config
from edge.activation.traffic import Traffic
from edge.activation.watch import WatchMonitor
from edge.admin.api import AdminApi
from edge.admin.parts import AdminParts
from edge.core.tenants import TENANT_ID, Mode
from edge.modes import MemoryStore, ModeCache
from edge.observe.metrics import Metrics
from edge.serving.compose import Parts
from tests.support.redis import RedisServer
from tests.support.settings import ADMIN_TOKEN, settings_for
from tests.support.stack import Stack, stack

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _full_api() -> AdminApi:
    """An admin API with every optional part, as ``edge serve`` builds it."""
    store = MemoryStore()
    cache = ModeCache(store)
    settings = config.from_mapping(settings_for("http://l", "http://n", "memory://", "edge:"))
    watch = WatchMonitor(store, Traffic(store, settings), settings)
    parts = Parts(settings, store)
    admin = AdminParts.of(store, parts.moves, parts.readiness, watch)
    return AdminApi(admin, cache, ADMIN_TOKEN, Metrics(cache))


OPENAPI = _full_api().document
_TEMPLATES = [
    (re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$"), path)
    for path in OPENAPI["paths"]
]


def _validate(schema: dict[str, Any], body: Any) -> None:
    Draft202012Validator({**schema, "components": OPENAPI["components"]}).validate(body)


def _documented(response: httpx.Response) -> None:
    """Fails the test when the answer is not what the OpenAPI document says it can be."""
    response.read()
    path, method = response.request.url.path, response.request.method.lower()
    template = next((t for pattern, t in _TEMPLATES if pattern.match(path)), None)
    if template is None or method not in OPENAPI["paths"][template]:
        assert response.status_code in (404, 405), f"{method} {path} is not documented"
        _validate(OPENAPI["components"]["schemas"]["Error"], response.json())
        return
    answers = OPENAPI["paths"][template][method]["responses"]
    status = str(response.status_code)
    assert status in answers, f"{method} {template} answered {status}, which is not documented"
    content = answers[status]["content"]
    if "application/json" in content:
        _validate(content["application/json"]["schema"], response.json())


def admin_client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=10, event_hooks={"response": [_documented]})


@pytest.fixture
def edge(redis_server: RedisServer, prefix: str) -> Iterator[Stack]:
    with stack(redis_server.url, prefix) as running:
        yield running


@pytest.fixture
def admin(edge: Stack) -> Iterator[httpx.Client]:
    with admin_client(edge.admin_url) as client:
        yield client


def _keys(redis_server: RedisServer, prefix: str) -> list[str]:
    return sorted(redis_server.cli("KEYS", f"{prefix}*").split())


def _walk(admin: httpx.Client, **params: str) -> list[list[dict[str, str]]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = admin.get("/api/tenants", params=query).raise_for_status().json()
        pages.append(body["tenants"])
        if (cursor := body["next_cursor"]) is None:
            return pages


# The document


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    return [r for v in node for r in _refs(v)] if isinstance(node, list) else []


def _routes(api: AdminApi) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The (path, method) pairs the app serves, and those its document names."""
    served = {
        (route.path, method.lower())
        for route in api.app().routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    documented = {
        (path, method)
        for path, item in api.document["paths"].items()
        for method in item
        if method != "parameters"
    }
    return served, documented


def test_the_openapi_document_is_valid_and_names_every_route() -> None:
    validate(OPENAPI)
    schemas = OPENAPI["components"]["schemas"]
    used = {ref.removeprefix("#/components/schemas/") for ref in _refs(OPENAPI)}
    assert used and used == set(schemas)  # every $ref resolves, and no schema is left over
    served, documented = _routes(_full_api())
    assert len(served) == 17  # with the transition insight's referrers and parity
    assert served == documented


def test_an_app_without_the_optional_parts_documents_only_what_it_serves() -> None:
    store = MemoryStore()
    settings = config.from_mapping(settings_for("http://l", "http://n", "memory://", "edge:"))
    admin = AdminParts.of(store, Parts(settings, store).moves)
    bare = AdminApi(admin, ModeCache(store), ADMIN_TOKEN)
    validate(bare.document)
    served, documented = _routes(bare)
    assert served == documented
    assert set(OPENAPI["paths"]) - set(bare.document["paths"]) == {
        "/metrics",
        "/api/tenants/{tenant}/readiness",
        "/api/tenants/{tenant}/watch",
    }


def test_the_document_is_served(admin: httpx.Client) -> None:
    assert admin.get("/api/openapi.json").json() == OPENAPI


def test_the_documents_limits_are_the_ones_enforced(admin: httpx.Client) -> None:
    (tenant,) = OPENAPI["paths"]["/api/tenants/{tenant}"]["parameters"]
    assert tenant["schema"]["pattern"] == f"^{TENANT_ID.pattern}$"
    longest = "a" * 63
    assert re.fullmatch(tenant["schema"]["pattern"].strip("^$"), longest)
    assert admin.get(f"/api/tenants/{longest}").status_code == 200
    assert admin.get(f"/api/tenants/{longest}a").status_code == 400

    params = OPENAPI["paths"]["/api/tenants"]["get"]["parameters"]
    most = next(p for p in params if p["name"] == "limit")["schema"]["maximum"]
    assert admin.get("/api/tenants", params={"limit": str(most)}).status_code == 200
    assert admin.get("/api/tenants", params={"limit": str(most + 1)}).status_code == 400

    modes = OPENAPI["components"]["schemas"]["Mode"]["enum"]
    assert modes == [mode.value for mode in Mode]
    for mode in modes:
        moved = admin.put("/api/tenants/acme", json={"mode": mode, "force": True}, headers=AUTH)
        assert moved.status_code == 200
    assert admin.put("/api/tenants/acme", json={"mode": "gone"}, headers=AUTH).status_code == 400


# Listing


def test_pages_walk_every_tenant_and_filter_by_mode_and_text(
    admin: httpx.Client, redis_server: RedisServer, prefix: str
) -> None:
    modes = ["setup", "active", "legacy"]
    pairs = [(f"{prefix}mode:gym-{n:03}", modes[n % 3]) for n in range(240)]
    redis_server.cli("MSET", *(item for pair in pairs for item in pair))
    redis_server.cli("SET", f"{prefix}mode:swim-broken", "actve")

    pages = _walk(admin, limit="50")
    listed = {t["tenant"]: t for page in pages for t in page}
    assert len(pages) > 1
    assert len(listed) == 241
    assert listed["gym-001"] == {"tenant": "gym-001", "mode": "active"}
    assert listed["swim-broken"] == {"tenant": "swim-broken", "mode": "invalid", "stored": "actve"}

    active = {t["tenant"] for page in _walk(admin, mode="active", limit="20") for t in page}
    assert active == {f"gym-{n:03}" for n in range(1, 240, 3)}
    found = [t["tenant"] for page in _walk(admin, q="GYM-01") for t in page]
    assert sorted(found) == [f"gym-{n:03}" for n in range(10, 20)]
    counted = admin.get("/api/tenants:counts").json()
    assert counted["counts"] == {"legacy": 80, "setup": 80, "active": 80, "invalid": 1}
    assert counted["total"] == 241


def test_counts_are_reused_until_a_change_is_made_here(
    admin: httpx.Client, redis_server: RedisServer, prefix: str
) -> None:
    first = admin.get("/api/tenants:counts").json()
    assert first["total"] == 0
    redis_server.cli("SET", f"{prefix}mode:raw-edit", "setup")
    assert admin.get("/api/tenants:counts").json() == first  # a raw edit waits for a recount
    admin.put("/api/tenants/acme", json={"mode": "active"}, headers=AUTH).raise_for_status()
    fresh = admin.get("/api/tenants:counts").json()
    assert fresh["counts"] == {"legacy": 0, "setup": 1, "active": 1, "invalid": 0}


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"mode": "live"}, "mode"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"q": "a*b"}, "q"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
    ],
)
def test_bad_listing_parameters_are_named(
    admin: httpx.Client, query: dict[str, str], named: str
) -> None:
    response = admin.get("/api/tenants", params=query)
    assert response.status_code == 400
    assert response.json()["error"].startswith(named)


# Single tenants, errors and the token


def test_a_change_needs_the_token_and_is_audited_with_its_actor(
    admin: httpx.Client, redis_server: RedisServer, prefix: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
        refused = admin.put("/api/tenants/acme", json={"mode": "setup"}, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert _keys(redis_server, prefix) == []

    moved = admin.put("/api/tenants/acme", json={"mode": "setup", "actor": "dana"}, headers=AUTH)
    assert moved.json()["change"]["actor"] == "dana"
    back = admin.put("/api/tenants/acme", json={"mode": "legacy"}, headers=AUTH)
    # The API's refusals name its own field, not the CLI's flag.
    assert back.status_code == 409 and back.json()["error"].endswith('needs "force": true')
    assert "--force" not in back.json()["error"]
    history = admin.get("/api/tenants/acme/history", params={"limit": "5"}).json()["history"]
    assert [(e["actor"], e["via"], e["to"]) for e in history] == [("dana", "api", "setup")]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{", "the body must be JSON"),
        (b"[1]", "the body must be a JSON object"),
        (b'{"mode": "live"}', "mode"),
        (b'{"mode": "setup", "force": "yes"}', "force"),
        (b'{"mode": "setup", "actor": ""}', "actor"),
    ],
)
def test_bad_bodies_are_refused_and_change_nothing(
    admin: httpx.Client, redis_server: RedisServer, prefix: str, body: bytes, named: str
) -> None:
    response = admin.put("/api/tenants/acme", content=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"].startswith(named)
    assert _keys(redis_server, prefix) == []


def test_starlettes_own_refusals_are_json_too(admin: httpx.Client) -> None:
    missing = admin.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "there is nothing at /api/nothing-here",
        "path": "/api/nothing-here",
    }
    wrong = admin.delete("/api/tenants/acme")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, HEAD, PUT"
    assert "DELETE is not allowed" in wrong.json()["error"]
    assert admin.get("/api/tenants:bulk").headers["allow"] == "POST"
    bad_id = admin.get("/api/tenants/Acme_Gym")
    assert bad_id.status_code == 400
    assert bad_id.json() == {
        "error": f"tenant: 'Acme_Gym' is not a tenant id (^{TENANT_ID.pattern}$)",
        "tenant": "Acme_Gym",
    }


def test_a_request_with_several_problems_is_told_each(admin: httpx.Client) -> None:
    listed = admin.get("/api/tenants", params={"mode": "live", "limit": "0"})
    assert listed.status_code == 400
    assert listed.json()["error"].startswith("mode: ")
    assert "; limit: " in listed.json()["error"]
    body = {"mode": "setup", "force": "yes", "actor": " "}
    moved = admin.put("/api/tenants/acme", json=body, headers=AUTH)
    assert moved.status_code == 400
    assert moved.json()["error"].startswith("force: ")
    assert "; actor: " in moved.json()["error"]
    assert admin.get("/api/tenants/acme").json() == {"tenant": "acme", "mode": "legacy"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/tenants/acme", {"mode": "setup", "forse": True}),
        ("/api/tenants/acme/schedule", {"mode": "setup", "at": "2099-01-01T00:00:00Z", "x": 1}),
        ("/api/tenants:bulk", {"tenants": ["acme"], "mode": "setup", "dryrun": True}),
        ("/api/tenants:bulk", {"moves": [{"tenant": "acme", "mode": "setup", "force": True}]}),
    ],
)
def test_a_field_the_body_does_not_have_is_refused_and_changes_nothing(
    admin: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    method = admin.put if path == "/api/tenants/acme" else admin.post
    answer = method(path, json=body, headers=AUTH)
    assert answer.status_code == 400
    assert "no such field" in answer.json()["error"]
    assert admin.get("/api/tenants/acme").json() == {"tenant": "acme", "mode": "legacy"}
    assert admin.get("/api/schedules").json() == {"schedules": []}
    # The control: the same body without the stray field is taken.
    clean = {k: v for k, v in body.items() if k in ("mode", "at", "tenants")}
    if "moves" in body:
        clean = {"moves": [{"tenant": "acme", "mode": "setup"}], "dry_run": True}
    elif path == "/api/tenants:bulk":
        clean["dry_run"] = True
    elif path == "/api/tenants/acme":
        clean["mode"] = "legacy"
    taken = method(path, json=clean, headers=AUTH)
    assert taken.status_code in (200, 201), taken.json()
    if path.endswith("/schedule"):
        (schedule,) = admin.get("/api/schedules").json()["schedules"]
        admin.delete(f"/api/schedules/{schedule['id']}", headers=AUTH)


def test_an_unreachable_store_is_a_503_in_the_same_shape(
    own_redis: RedisServer, prefix: str
) -> None:
    with stack(own_redis.url, prefix) as running, admin_client(running.admin_url) as admin:
        own_redis.stop()
        for response in (
            admin.get("/api/tenants"),
            admin.get("/api/tenants/acme"),
            admin.get("/api/tenants:counts"),
            admin.put("/api/tenants/acme", json={"mode": "setup"}, headers=AUTH),
            admin.get("/api/schedules"),
        ):
            assert response.status_code == 503
            assert response.json()["error"] == "the mode store cannot be reached"
            assert response.headers["retry-after"] == "1"


# Bulk moves


def test_a_bulk_move_is_checked_whole_before_anything_changes(
    admin: httpx.Client, redis_server: RedisServer, prefix: str
) -> None:
    admin.put("/api/tenants/north", json={"mode": "active"}, headers=AUTH).raise_for_status()
    before = _keys(redis_server, prefix)

    refused = admin.post(
        "/api/tenants:bulk",
        json={"tenants": ["east", "Bad_Id", "north", "west", "east"], "mode": "setup"},
        headers=AUTH,
    )

    assert refused.status_code == 409
    assert refused.json()["error"] == "3 of 5 moves cannot be made; nothing changed"
    assert [(p["index"], p["tenant"]) for p in refused.json()["problems"]] == [
        (1, "Bad_Id"),
        (2, "north"),
        (4, "east"),
    ]
    assert refused.json()["problems"][1]["reason"].endswith('needs "force": true')
    assert _keys(redis_server, prefix) == before


def test_a_bulk_move_reports_each_tenant_and_audits_each_change(
    admin: httpx.Client, redis_server: RedisServer, prefix: str
) -> None:
    admin.put("/api/tenants/north", json={"mode": "setup"}, headers=AUTH).raise_for_status()
    body = {"tenants": ["north", "south", "east"], "mode": "setup", "actor": "erin"}

    dry = admin.post("/api/tenants:bulk", json={**body, "dry_run": True}, headers=AUTH).json()
    assert dry["dry_run"] is True
    assert dry["summary"] == {"moved": 2, "unchanged": 1, "refused": 0}
    assert redis_server.cli("EXISTS", f"{prefix}mode:south") == "0"

    done = admin.post("/api/tenants:bulk", json=body, headers=AUTH).json()
    assert done["summary"] == {"moved": 2, "unchanged": 1, "refused": 0}
    assert done["results"] == [
        {"tenant": "north", "from": "setup", "to": "setup", "result": "unchanged"},
        {"tenant": "south", "from": None, "to": "setup", "result": "moved"},
        {"tenant": "east", "from": None, "to": "setup", "result": "moved"},
    ]
    for tenant in ("south", "east"):
        history = admin.get(f"/api/tenants/{tenant}/history").json()["history"]
        assert [(e["actor"], e["via"]) for e in history] == [("erin", "api")]


def test_a_forced_bulk_move_rolls_back_and_mixed_moves_are_one_request(
    admin: httpx.Client, redis_server: RedisServer, prefix: str
) -> None:
    moves = [{"tenant": "north", "mode": "active"}, {"tenant": "south", "mode": "setup"}]
    admin.post("/api/tenants:bulk", json={"moves": moves}, headers=AUTH).raise_for_status()
    assert redis_server.cli("MGET", f"{prefix}mode:north", f"{prefix}mode:south").split() == [
        "active",
        "setup",
    ]

    back = {"tenants": ["north", "south"], "mode": "legacy"}
    assert admin.post("/api/tenants:bulk", json=back, headers=AUTH).status_code == 409
    rolled = admin.post("/api/tenants:bulk", json={**back, "force": True}, headers=AUTH).json()
    assert rolled["summary"]["moved"] == 2
    history = admin.get("/api/tenants/north/history").json()["history"]
    assert history[0]["forced"] is True and history[0]["to"] == "legacy"


@pytest.mark.parametrize(
    "body",
    [
        {"tenants": "north", "mode": "setup"},
        {"tenants": ["north"], "mode": "live"},
        {"tenants": ["north"], "moves": [], "mode": "setup"},
        {"moves": [{"tenant": "north"}]},
        {"tenants": ["north"], "mode": "setup", "dry_run": "no"},
    ],
)
def test_a_malformed_bulk_request_is_a_400(
    admin: httpx.Client, redis_server: RedisServer, prefix: str, body: dict[str, Any]
) -> None:
    assert admin.post("/api/tenants:bulk", json=body, headers=AUTH).status_code == 400
    assert admin.post("/api/tenants:bulk", json=body).status_code == 401
    assert _keys(redis_server, prefix) == []


# Schedules


def test_a_scheduled_move_is_listed_cancelled_and_refused_when_it_cannot_be(
    admin: httpx.Client, redis_server: RedisServer, prefix: str
) -> None:
    later = "2099-01-01T09:00:00+01:00"
    planned = admin.post(
        "/api/tenants/acme/schedule", json={"mode": "active", "at": later, "actor": "fay"}
    )
    assert planned.status_code == 401
    planned = admin.post(
        "/api/tenants/acme/schedule",
        json={"mode": "active", "at": later, "actor": "fay"},
        headers=AUTH,
    )
    assert planned.status_code == 201
    schedule = planned.json()["schedule"]
    assert (schedule["tenant"], schedule["mode"], schedule["actor"]) == ("acme", "active", "fay")
    assert schedule["at"] == "2099-01-01T08:00:00+00:00"

    for body, status, message in [
        ({"mode": "setup", "at": "2099-02-01T00:00:00Z"}, 409, "will be active by then"),
        ({"mode": "setup", "at": "2020-01-01T00:00:00Z"}, 409, "is in the past"),
        ({"mode": "setup", "at": "2099-02-01T00:00:00"}, 400, "at: "),
        ({"mode": "setup", "at": "tomorrow"}, 400, "at: "),
    ]:
        refused = admin.post("/api/tenants/acme/schedule", json=body, headers=AUTH)
        assert refused.status_code == status
        assert message in refused.json()["error"]

    assert admin.get("/api/schedules").json()["schedules"] == [schedule]
    assert admin.get("/api/schedules", params={"tenant": "other"}).json()["schedules"] == []
    assert admin.delete(f"/api/schedules/{schedule['id']}").status_code == 401
    cancelled = admin.delete(f"/api/schedules/{schedule['id']}", headers=AUTH)
    assert cancelled.json() == {"schedule": schedule, "cancelled": True}
    assert admin.delete(f"/api/schedules/{schedule['id']}", headers=AUTH).status_code == 404
    assert admin.get("/api/schedules").json()["schedules"] == []
    assert redis_server.cli("EXISTS", f"{prefix}mode:acme") == "0"
