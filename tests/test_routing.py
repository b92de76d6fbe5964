"""The router end to end: real uvicorn, real Redis, recording backends, real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.redis import RedisServer
from tests.support.settings import ADMIN_TOKEN, LEGACY_HOST, NEW_HOST
from tests.support.stack import Stack, stack
from tests.support.waiting import eventually

LEGACY = {"Host": LEGACY_HOST}
NEW = {"Host": NEW_HOST}
AS_JSON = {"Accept": "application/json"}


@pytest.fixture
def edge(redis_server: RedisServer, prefix: str) -> Iterator[Stack]:
    redis_server.cli("SET", f"{prefix}mode:swim", "setup")
    redis_server.cli("SET", f"{prefix}mode:dance", "active")
    with stack(redis_server.url, prefix) as running:
        yield running


def test_a_legacy_tenant_reaches_the_legacy_portal_with_path_and_query_unchanged(
    edge: Stack,
) -> None:
    with edge.client() as client:
        response = client.get("/acme/classes/7?week=3&q=a%20b", headers=LEGACY)
    assert response.status_code == 200
    assert response.json() == {"backend": "legacy", "path": "/acme/classes/7"}
    seen = edge.legacy.seen[-1]
    assert (seen.method, seen.path, seen.query) == ("GET", "/acme/classes/7", "week=3&q=a%20b")
    assert seen.header("x-edge-tenant") == "acme"
    assert seen.header("x-edge-mode") == "legacy"
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    assert seen.header("x-forwarded-host") == LEGACY_HOST
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-request-id") == response.headers["x-request-id"]


def test_client_supplied_edge_and_forwarding_headers_never_reach_a_backend(edge: Stack) -> None:
    forged = {
        **LEGACY,
        "X-Edge-Mode": "active",
        "X-Edge-Tenant": "other",
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.test",
    }
    with edge.client() as client:
        assert client.get("/acme/", headers=forged).status_code == 200
    seen = edge.legacy.seen[-1]
    assert seen.header("x-edge-mode") == "legacy"
    assert seen.header("x-edge-tenant") == "acme"
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    assert seen.header("x-forwarded-host") == LEGACY_HOST
    assert [k for k, _ in seen.headers].count("x-edge-mode") == 1


def test_an_active_tenant_is_redirected_to_the_new_portal(edge: Stack) -> None:
    with edge.client() as client:
        get = client.get("/dance/classes/7?week=3", headers=LEGACY)
        post = client.post("/dance/classes/7/enroll", headers=LEGACY, content=b"child=ann")
    assert get.status_code == 302
    assert get.headers["location"] == f"https://{NEW_HOST}/dance/schedule/7?week=3"
    assert get.headers["cache-control"] == "no-store"
    assert get.headers["x-edge-mode"] == "active"
    assert post.status_code == 307
    assert edge.reached_backend() == 0


def test_setup_serves_the_preview_and_blocks_writes(edge: Stack) -> None:
    with edge.client() as client:
        page = client.get("/swim/schedule", headers=NEW)
        blocked = client.post("/swim/checkout", headers={**NEW, **AS_JSON}, content=b"pay=1")
        html = client.post("/swim/checkout", headers={**NEW, "Accept": "text/html"})
        legacy_write = client.post("/swim/classes/1/enroll", headers=LEGACY)
    assert page.status_code == 200
    assert edge.new.seen[0].header("x-edge-mode") == "setup"
    assert blocked.status_code == 403
    assert blocked.headers["x-edge-mode"] == "setup"
    assert blocked.json() == {"error": blocked.json()["error"], "tenant": "swim", "mode": "setup"}
    assert html.status_code == 403
    assert html.headers["content-type"].startswith("text/html")
    assert legacy_write.status_code == 200
    assert [s.method for s in edge.new.seen] == ["GET"]


def test_the_setup_allow_list_lets_staff_sign_in(edge: Stack) -> None:
    with edge.client() as client:
        response = client.post("/swim/staff/login", headers=NEW, content=b"user=a")
    assert response.status_code == 200
    assert edge.new.seen[-1].method == "POST"
    assert edge.new.seen[-1].body == b"user=a"


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_a_method_override_cannot_smuggle_a_write_into_the_preview(
    edge: Stack, header: str
) -> None:
    with edge.client() as client:
        response = client.get("/swim/checkout", headers={**NEW, header: "DELETE"})
        harmless = client.get("/swim/schedule", headers={**NEW, header: "GET"})
    assert response.status_code == 403
    assert harmless.status_code == 200
    assert [s.path for s in edge.new.seen] == ["/swim/schedule"]
    assert harmless.status_code == 200 and edge.new.seen[0].header(header.lower()) is None


def test_a_tenant_not_yet_enabled_is_sent_back_to_the_legacy_portal(edge: Stack) -> None:
    with edge.client() as client:
        get = client.get("/acme/schedule", headers=NEW)
        post = client.post("/acme/checkout", headers={**NEW, **AS_JSON})
    assert get.status_code == 302
    assert get.headers["location"] == f"https://{LEGACY_HOST}/acme/"
    assert post.status_code == 403
    assert post.json()["mode"] == "legacy"
    assert edge.reached_backend() == 0


@pytest.mark.parametrize(
    ("host", "path", "status"),
    [
        ("evil.test", "/acme/", 421),
        (LEGACY_HOST, "/", 404),
        (LEGACY_HOST, "/ACME/", 404),
        (LEGACY_HOST, "/acme_gym/", 404),
        (LEGACY_HOST, "/-acme/", 404),
    ],
)
def test_unknown_hosts_and_bad_tenants_reach_nothing(
    edge: Stack, host: str, path: str, status: int
) -> None:
    misses = edge.edge.cache.stats.misses
    with edge.client() as client:
        response = client.get(path, headers={"Host": host, **AS_JSON})
    assert response.status_code == status
    assert "error" in response.json()
    assert edge.reached_backend() == 0
    assert edge.edge.cache.stats.misses == misses


def test_an_invalid_stored_mode_is_an_error_never_a_write(
    edge: Stack, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:broken", "actve")
    with edge.client() as client:
        write = client.post("/broken/checkout", headers={**NEW, **AS_JSON})
        read = client.get("/broken/", headers=LEGACY)
    assert write.status_code == 500
    assert write.json()["mode"] == "invalid"
    assert read.status_code == 500
    assert edge.reached_backend() == 0
    assert edge.edge.cache.stats.invalid_values >= 1


def test_a_raw_redis_cli_edit_takes_effect_within_the_resync_bound(
    edge: Stack, redis_server: RedisServer, prefix: str
) -> None:
    with edge.client() as client:
        assert client.get("/yoga/", headers=LEGACY).status_code == 200
        redis_server.cli("SET", f"{prefix}mode:yoga", "active")
        eventually(lambda: client.get("/yoga/", headers=LEGACY).status_code == 302, within=2.0)


def test_a_change_through_the_admin_api_applies_at_once_and_needs_the_token(edge: Stack) -> None:
    with edge.client() as client, edge.admin() as admin:
        assert client.get("/acme/", headers=LEGACY).status_code == 200
        refused = admin.put("/api/tenants/acme", json={"mode": "active"})
        wrong = admin.put(
            "/api/tenants/acme", json={"mode": "active"}, headers={"Authorization": "Bearer nope"}
        )
        assert (refused.status_code, wrong.status_code) == (401, 401)
        assert admin.get("/api/tenants/acme").json() == {"tenant": "acme", "mode": "legacy"}
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        moved = admin.put("/api/tenants/acme", json={"mode": "active"}, headers=auth)
        assert moved.status_code == 200
        assert moved.json()["mode"] == "active"
        eventually(lambda: client.get("/acme/", headers=LEGACY).status_code == 302, within=1.0)
        back = admin.put("/api/tenants/acme", json={"mode": "setup"}, headers=auth)
        assert back.status_code == 409
        assert admin.get("/api/tenants/acme").json()["mode"] == "active"
        history = admin.get("/api/tenants/acme/history").json()["history"]
        assert [(h["from"], h["to"]) for h in history] == [(None, "active")]


def test_the_admin_api_is_not_on_the_public_listener(edge: Stack) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with edge.client() as client:
        unknown_host = client.get("/api/tenants", headers={"Host": "127.0.0.1"})
        as_tenant = client.put(
            "/api/tenants/acme", headers={**NEW, **auth}, json={"mode": "active"}
        )
        client.put("/api/tenants/acme", headers={**LEGACY, **auth}, json={"mode": "active"})
    assert unknown_host.status_code == 421
    assert as_tenant.status_code == 403  # tenant "api" on the new front: not enabled
    assert [s.path for s in edge.legacy.seen] == ["/api/tenants/acme"]  # just a legacy page
    with edge.admin() as admin:
        assert admin.get("/api/tenants/acme").json()["mode"] == "legacy"


def test_admin_health_and_readiness(edge: Stack) -> None:
    with edge.admin() as admin:
        assert admin.get("/healthz").status_code == 200
        eventually(lambda: admin.get("/readyz").status_code == 200)


def test_after_the_sunset_the_legacy_portal_is_retired(
    redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:dance", "active")
    with stack(redis_server.url, prefix, policy={"legacy_sunset": "2020-01-01T00:00:00Z"}) as edge:
        with edge.client() as client:
            retired = client.get("/acme/classes", headers=LEGACY)
            moved = client.get("/dance/classes", headers=LEGACY)
            new = client.get("/acme/", headers=NEW)
        assert retired.status_code == 410
        assert "retired" in retired.text
        assert moved.status_code == 302
        assert new.status_code == 302
        assert edge.reached_backend() == 0


def test_a_store_outage_keeps_known_tenants_and_guesses_nothing(
    own_redis: RedisServer, prefix: str
) -> None:
    own_redis.cli("SET", f"{prefix}mode:swim", "setup")
    with stack(own_redis.url, prefix) as edge, edge.client() as client:
        assert client.get("/swim/schedule", headers=NEW).status_code == 200
        assert client.get("/acme/", headers=LEGACY).status_code == 200
        own_redis.stop()
        assert client.get("/swim/schedule", headers=NEW).status_code == 200
        assert client.post("/swim/checkout", headers=NEW).status_code == 403
        assert client.get("/acme/", headers=LEGACY).status_code == 200
        unknown = client.get("/newcomer/", headers={**LEGACY, **AS_JSON})
        assert unknown.status_code == 503
        assert unknown.headers["retry-after"].isdigit()
        assert [s.path for s in edge.legacy.seen].count("/newcomer/") == 0

        own_redis.start()
        eventually(lambda: client.get("/newcomer/", headers=LEGACY).status_code == 200)
        with edge.admin() as admin:
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert (
                admin.put("/api/tenants/swim", json={"mode": "active"}, headers=auth).status_code
                == 200
            )
        eventually(lambda: client.get("/swim/schedule", headers=LEGACY).status_code == 302)


def test_forwarding_to_a_dead_backend_is_a_502(redis_server: RedisServer, prefix: str) -> None:
    dead = {"backend": "http://127.0.0.1:9"}
    with stack(redis_server.url, prefix, legacy=dead) as edge, edge.client() as client:
        response = client.get("/acme/", headers=LEGACY)
    assert response.status_code == 502
    assert response.headers["x-request-id"]


def test_head_requests_get_headers_without_a_body(edge: Stack) -> None:
    with httpx.Client(base_url=edge.public_url) as client:
        response = client.head("/dance/classes", headers=LEGACY)
    assert response.status_code == 302
    assert response.content == b""
