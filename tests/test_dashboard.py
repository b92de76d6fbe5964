"""The dashboard over plain HTTP: sessions, CSRF, moves, search and paging, the wording."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from edge import config
from edge.admin.wording import describe_move, how_long, sunset_distance, what_customers_see
from edge.config import StoreSettings
from edge.core.tenants import Mode
from edge.modes import ModeStore, open_store
from edge.moves.service import Moves
from edge.routing.decide import Policy
from tests.support.dashboard import csrf_of, log_in, text_of
from tests.support.redis import RedisServer
from tests.support.settings import ADMIN_TOKEN, NEW_HOST, settings_for
from tests.support.stack import Stack, stack
from tests.support.waiting import eventually

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def edge(redis_server: RedisServer, prefix: str) -> Iterator[Stack]:
    with stack(redis_server.url, prefix) as running:
        yield running


@pytest.fixture
async def store(redis_server: RedisServer, prefix: str) -> AsyncIterator[ModeStore]:
    """The routing keys the stack uses, read and written from the test's side."""
    opened = open_store(StoreSettings(url=redis_server.url, prefix=prefix))
    yield opened
    await opened.close()


def move(client: httpx.Client, tenant: str, **form: str) -> httpx.Response:
    confirm = client.get(f"/tenants/{tenant}/move", params={"to": form["to"]})
    return client.post(f"/tenants/{tenant}/move", data={"csrf": csrf_of(confirm), **form})


# Sessions


@pytest.mark.parametrize(
    ("method", "path", "after"),
    [
        ("GET", "/", "/"),
        ("GET", "/?q=swim", "/?q=swim"),
        ("GET", "/tenants/acme-gym", "/tenants/acme-gym"),
        ("GET", "/tenants/acme-gym/move?to=setup", "/tenants/acme-gym/move?to=setup"),
        ("POST", "/tenants/acme-gym/move", "/"),
    ],
)
async def test_without_a_session_every_page_sends_to_the_login(
    edge: Stack, method: str, path: str, after: str, store: ModeStore
) -> None:
    with edge.admin() as client:
        response = client.request(method, path, data={"to": "setup", "from": ""})
    assert response.status_code == 303
    assert response.headers["location"] == "/login?" + urlencode({"next": after})
    assert await store.get("acme-gym") is None


async def test_a_wrong_token_is_refused_and_gives_no_session(edge: Stack) -> None:
    with edge.admin() as client:
        response = client.post("/login", data={"name": "mallory", "token": "not-the-token"})
        assert response.status_code == 401
        assert "That is not the admin token." in text_of(response)
        assert "set-cookie" not in response.headers
        assert client.get("/").status_code == 303


def test_a_name_is_needed_for_the_audit_log(edge: Stack) -> None:
    with edge.admin() as client:
        response = client.post("/login", data={"name": "<b>", "token": ADMIN_TOKEN})
    assert response.status_code == 400
    assert "the audit log records it" in text_of(response)
    assert "set-cookie" not in response.headers


def test_logging_in_sets_a_signed_http_only_strict_cookie(edge: Stack) -> None:
    with edge.admin() as client:
        response = client.post(
            "/login", data={"name": "alice", "token": ADMIN_TOKEN, "next": "/tenants/acme-gym"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/tenants/acme-gym"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        page = client.get("/")
        assert page.status_code == 200
        assert "Signed in as alice" in text_of(page)
        value = client.cookies["edge_dashboard"]
        client.cookies.set("edge_dashboard", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
        assert client.get("/").status_code == 303


@pytest.mark.parametrize("target", ["//evil.test/x", "https://evil.test/", "/\\evil.test", "/\t/x"])
def test_login_never_redirects_off_the_dashboard(edge: Stack, target: str) -> None:
    with edge.admin() as client:
        response = client.post("/login", data={"name": "al", "token": ADMIN_TOKEN, "next": target})
    assert response.headers["location"] == "/"


def test_logging_out_ends_the_session(edge: Stack) -> None:
    with log_in(edge) as client:
        page = client.get("/")
        assert client.post("/logout", data={}).status_code == 403
        response = client.post("/logout", data={"csrf": csrf_of(page)})
        assert (response.status_code, response.headers["location"]) == (303, "/login")
        assert client.get("/").status_code == 303


def test_a_new_admin_token_logs_everyone_out(redis_server: RedisServer, prefix: str) -> None:
    with stack(redis_server.url, prefix) as first, log_in(first) as client:
        cookie = client.cookies["edge_dashboard"]
        assert client.get("/").status_code == 200
    with stack(redis_server.url, prefix, admin={"token": "another-token-0123456789"}) as second:
        with second.admin() as client:
            client.cookies.set("edge_dashboard", cookie)
            assert client.get("/").status_code == 303
        with stack(redis_server.url, prefix) as third, third.admin() as client:
            client.cookies.set("edge_dashboard", cookie)
            assert client.get("/").status_code == 200


# Moving a tenant


async def test_a_move_is_confirmed_then_made_audited_and_followed(
    edge: Stack, store: ModeStore
) -> None:
    with log_in(edge) as client:
        tenant_page = client.get("/tenants/acme-gym")
        assert "legacy" in text_of(tenant_page) and "Move to setup" in text_of(tenant_page)

        confirm = client.get("/tenants/acme-gym/move", params={"to": "setup"})
        words = text_of(confirm)
        assert "Move acme-gym from legacy to setup?" in words
        assert "Parents keep using the Parent Portal at https://parents.test/acme-gym/" in words
        assert (
            f"The Customer Portal opens as a read-only preview at https://{NEW_HOST}/acme-gym/"
            in words
        )
        assert await store.get("acme-gym") is None

        done = client.post(
            "/tenants/acme-gym/move", data={"csrf": csrf_of(confirm), "to": "setup", "from": ""}
        )
        assert (done.status_code, done.headers["location"]) == (303, "/tenants/acme-gym?moved=1")
        assert "Done: acme-gym is now setup" in text_of(client.get(done.headers["location"]))

    assert await store.get("acme-gym") == "setup"
    [change] = await store.history("acme-gym")
    assert (change.actor, change.via, change.forced) == ("dashboard:alice", "dashboard", False)
    with edge.client() as public:
        eventually(lambda: public.get("/acme-gym/", headers={"Host": NEW_HOST}).status_code == 200)
    assert edge.new.seen[-1].path == "/acme-gym/"


@pytest.mark.parametrize("csrf", [None, "", "forged-token"])
async def test_a_change_without_the_session_csrf_token_is_refused(
    edge: Stack, csrf: str | None, store: ModeStore
) -> None:
    with log_in(edge) as client:
        form = {"to": "setup", "from": ""} | ({} if csrf is None else {"csrf": csrf})
        response = client.post("/tenants/acme-gym/move", data=form)
    assert response.status_code == 403
    assert "Nothing was changed" in text_of(response)
    assert '<a href="/tenants/acme-gym">← Back</a>' in response.text
    assert await store.get("acme-gym") is None
    assert await store.history("acme-gym") == []


async def test_the_csrf_token_of_another_session_is_refused(edge: Stack, store: ModeStore) -> None:
    with log_in(edge, "alice") as alice, log_in(edge, "bob") as bob:
        alices = csrf_of(alice.get("/"))
        response = bob.post(
            "/tenants/acme-gym/move", data={"csrf": alices, "to": "setup", "from": ""}
        )
    assert response.status_code == 403
    assert await store.get("acme-gym") is None


async def test_going_back_needs_the_force_box_and_says_it_is_a_rollback(
    edge: Stack, store: ModeStore
) -> None:
    await Moves(store).set_mode("acme-gym", Mode.ACTIVE, actor="ops")
    with log_in(edge) as client:
        confirm = client.get("/tenants/acme-gym/move", params={"to": "setup"})
        words = text_of(confirm)
        assert "Roll acme-gym back from active to setup?" in words
        assert "This is a rollback" in words
        assert "Parent Portal links stop redirecting to the Customer Portal." in words

        refused = move(client, "acme-gym", to="setup", **{"from": "active"})
        assert refused.status_code == 409
        assert "acme-gym is active; moving back to setup needs" in text_of(refused)
        assert "Nothing was changed" in text_of(refused)
        assert await store.get("acme-gym") == "active"

        forced = move(client, "acme-gym", to="setup", force="yes", **{"from": "active"})
        assert forced.status_code == 303
    assert await store.get("acme-gym") == "setup"
    latest = (await store.history("acme-gym"))[0]
    assert (latest.previous, latest.mode, latest.forced) == ("active", Mode.SETUP, True)


async def test_a_move_confirmed_against_an_older_mode_is_refused(
    edge: Stack, store: ModeStore
) -> None:
    with log_in(edge) as client:
        confirm = client.get("/tenants/acme-gym/move", params={"to": "active"})
        await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="bob")
        response = client.post(
            "/tenants/acme-gym/move", data={"csrf": csrf_of(confirm), "to": "active", "from": ""}
        )
    assert response.status_code == 409
    assert "changed while you were confirming (it is now setup)" in text_of(response)
    assert await store.get("acme-gym") == "setup"


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/tenants/Acme/move?to=setup", 404, "is not a tenant id"),
        ("/tenants/acme-gym/move?to=gone", 400, "'gone' is not a mode"),
        ("/tenants/acme-gym/move", 400, "'' is not a mode"),
        ("/tenants/acme-gym/move?to=legacy", 409, "acme-gym is already legacy"),
    ],
)
def test_a_bad_move_is_explained(edge: Stack, path: str, status: int, says: str) -> None:
    with log_in(edge) as client:
        response = client.get(path)
    assert response.status_code == status
    assert says in text_of(response)


# The tenants page


async def test_counts_search_and_pages(
    edge: Stack, redis_server: RedisServer, store: ModeStore
) -> None:
    for n in range(130):
        await Moves(store).set_mode(f"gym-{n:03}", Mode.SETUP, actor="ops")
    for tenant in ("swim-north", "swim-south"):
        await Moves(store).set_mode(tenant, Mode.ACTIVE, actor="ops")
    await Moves(store).set_mode("dance-hall", Mode.LEGACY, actor="ops")  # no key before

    with log_in(edge) as client:
        first = client.get("/")
        words = text_of(first)
        assert "legacy 0 setup 130 active 2 invalid 0" in words  # a same-mode move writes nothing
        assert "132 tenants have a mode set" in words

        seen: list[str] = []
        page = first
        while True:
            seen += re.findall(r'<a href="/tenants/([a-z0-9-]+)">', page.text)
            following = re.search(r'href="([^"]+)" id="next-page"', page.text)
            if following is None:
                break
            page = client.get(unescape(following.group(1)))
        assert set(seen) == {f"gym-{n:03}" for n in range(130)} | {"swim-north", "swim-south"}

        swim = client.get("/", params={"q": "swim"})
        assert re.findall(r'<a href="/tenants/([a-z0-9-]+)">', swim.text) == [
            "swim-north",
            "swim-south",
        ]
        active = client.get("/", params={"mode": "active", "q": "north"})
        assert re.findall(r'<a href="/tenants/([a-z0-9-]+)">', active.text) == ["swim-north"]

        unknown = client.get("/", params={"q": "dance-hall"})
        assert "No tenant with a mode set matches “dance-hall”" in text_of(unknown)
        assert 'href="/tenants/dance-hall" id="open-tenant"' in unknown.text

        bad = client.get("/", params={"q": "A*"})
        assert "Search by part of a tenant id" in text_of(bad)
        stale = client.get("/", params={"cursor": "not a cursor"})
        assert "That page link is out of date" in text_of(stale)


async def test_everything_shown_is_escaped(edge: Stack, redis_server: RedisServer) -> None:
    redis_server.cli("SET", f"{edge.edge.settings.store.prefix}mode:odd-gym", "<script>x</script>")
    with log_in(edge) as client:
        listing = client.get("/", params={"q": "odd"})
        tenant = client.get("/tenants/odd-gym")
    for page in (listing, tenant):
        assert "<script>" not in page.text
        assert "&lt;script&gt;x&lt;/script&gt;" in page.text
    assert "invalid" in text_of(tenant)


def test_the_pages_refuse_framing_and_scripts(edge: Stack) -> None:
    with log_in(edge) as client:
        page = client.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none'
    assert page.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("sunset", "says"),
    [
        (None, "Legacy sunset Not set"),
        (timedelta(days=3, hours=5, minutes=1), "in 3 days, 5 hours"),
        (-timedelta(hours=2, minutes=7), "passed 2 hours, 7 minutes ago"),
    ],
)
def test_the_sunset_and_how_long_remains(
    redis_server: RedisServer, prefix: str, sunset: timedelta | None, says: str
) -> None:
    policy = {} if sunset is None else {"legacy_sunset": datetime.now(UTC) + sunset}
    with stack(redis_server.url, prefix, policy=policy) as edge, log_in(edge) as client:
        words = text_of(client.get("/"))
    assert says in words
    assert re.search(r"Now \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", words)


# Around the dashboard


def test_the_admin_api_and_health_are_untouched(edge: Stack) -> None:
    with edge.admin() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/api/tenants").status_code == 200
        assert client.put("/api/tenants/acme-gym", json={"mode": "setup"}).status_code == 401
        assert client.post("/").status_code in (404, 405)
        assert client.get("/nowhere").status_code == 404


def test_the_public_listener_serves_no_dashboard(edge: Stack) -> None:
    with edge.client() as client:
        for path in ("/login", "/tenants/acme-gym"):
            response = client.get(path, headers={"Host": "parents.test"})
            assert "Log in" not in response.text and "edge_dashboard" not in str(response.headers)


async def test_without_a_token_the_dashboard_is_read_only(
    redis_server: RedisServer, prefix: str, store: ModeStore
) -> None:
    with stack(redis_server.url, prefix, admin={"token": ""}) as edge, edge.admin() as client:
        page = client.get("/")
        assert page.status_code == 200
        assert "No admin token is configured" in text_of(page)
        assert "Move to setup" not in text_of(client.get("/tenants/acme-gym"))
        assert client.get("/login").headers["location"] == "/"
        confirm = client.get("/tenants/acme-gym/move", params={"to": "setup"})
        assert confirm.status_code == 403
        response = client.post("/tenants/acme-gym/move", data={"to": "setup", "from": ""})
        assert response.status_code == 403
        assert "allows no changes" in text_of(response)
        assert await store.get("acme-gym") is None


def test_a_store_outage_is_said_plainly(own_redis: RedisServer, prefix: str) -> None:
    with stack(own_redis.url, prefix) as edge, log_in(edge) as client:
        own_redis.stop()
        response = client.get("/tenants/acme-gym")
    assert response.status_code == 503
    assert "The mode store cannot be reached" in text_of(response)


# The wording, pure


def policy(**overrides: Any) -> Policy:
    raw = settings_for("http://127.0.0.1:1", "http://127.0.0.1:2", "memory://", "edge:")
    raw["policy"] = {**raw["policy"], **overrides}
    return Policy.from_settings(config.from_mapping(raw))


@pytest.mark.parametrize(
    ("mode", "sunset", "expected"),
    [
        (
            Mode.LEGACY,
            None,
            [
                "Parents use the Parent Portal at https://parents.test/gym/, as always.",
                "The Customer Portal is not enabled: its pages send visitors back to the Parent "
                "Portal, and nothing can be booked or changed there.",
            ],
        ),
        (
            Mode.SETUP,
            None,
            [
                "Parents keep using the Parent Portal at https://parents.test/gym/.",
                "The Customer Portal opens as a read-only preview at https://portal.test/gym/: "
                "pages show, but enrolments, checkout and every other change are refused "
                "(except POST /gym/staff/login).",
            ],
        ),
        (
            Mode.SETUP,
            NOW,
            [
                "The Parent Portal is retired (the legacy sunset has passed): it answers 410 Gone.",
                "The Customer Portal opens as a read-only preview at https://portal.test/gym/: "
                "pages show, but enrolments, checkout and every other change are refused "
                "(except POST /gym/staff/login).",
            ],
        ),
        (
            Mode.ACTIVE,
            NOW,
            [
                "Every Parent Portal link redirects to the Customer Portal at "
                "https://portal.test/gym/.",
                "Enrolments, checkout and everything else work on the Customer Portal.",
            ],
        ),
        (
            None,
            None,
            [
                "Every request for gym fails with an error: its stored value is not a mode. "
                "Moving it to any mode repairs it."
            ],
        ),
    ],
)
def test_what_customers_see(
    mode: Mode | None, sunset: datetime | None, expected: list[str]
) -> None:
    assert what_customers_see("gym", mode, policy(legacy_sunset=sunset), NOW) == expected


def test_a_private_preview_is_called_so() -> None:
    [_, preview] = what_customers_see("gym", Mode.SETUP, policy(private_preview=True), NOW)
    assert preview.startswith(
        "The Customer Portal opens as a private read-only preview, only for holders of a "
        "preview link (everyone else is sent back to the Parent Portal), at "
        "https://portal.test/gym/: pages show"
    )


def test_a_permanent_redirect_is_called_so() -> None:
    [redirect, _] = what_customers_see("gym", Mode.ACTIVE, policy(redirect_status=301), NOW)
    assert redirect.endswith("permanently (301): browsers may remember it.")


@pytest.mark.parametrize(
    ("current", "target", "rollback", "warnings"),
    [
        (Mode.LEGACY, Mode.SETUP, False, 0),
        (Mode.SETUP, Mode.ACTIVE, False, 0),
        (None, Mode.LEGACY, False, 0),
        (Mode.SETUP, Mode.LEGACY, True, 0),
        (Mode.ACTIVE, Mode.LEGACY, True, 1),
        (Mode.ACTIVE, Mode.SETUP, True, 2),
    ],
)
def test_which_moves_are_rollbacks(
    current: Mode | None, target: Mode, rollback: bool, warnings: int
) -> None:
    move = describe_move("gym", current, target, policy(), NOW)
    assert (move.rollback, len(move.warnings)) == (rollback, warnings)


def test_a_move_away_from_active_after_the_sunset_warns_that_nothing_works() -> None:
    move = describe_move("gym", Mode.ACTIVE, Mode.SETUP, policy(legacy_sunset=NOW), NOW)
    assert move.warnings[-1] == (
        "The legacy sunset has passed, so the Parent Portal answers 410 Gone: in setup "
        "nobody can book or pay for gym. Only active keeps it working."
    )


@pytest.mark.parametrize(
    ("delta", "words"),
    [
        (timedelta(seconds=30), "less than a minute"),
        (timedelta(minutes=1), "1 minute"),
        (timedelta(hours=2, minutes=7, seconds=59), "2 hours, 7 minutes"),
        (timedelta(days=1), "1 day"),
        (timedelta(days=149, hours=7, minutes=5), "149 days, 7 hours"),
        (timedelta(days=2, minutes=5), "2 days"),
    ],
)
def test_how_long(delta: timedelta, words: str) -> None:
    assert how_long(delta) == words
    assert how_long(-delta) == words


def test_sunset_distance() -> None:
    assert sunset_distance(NOW + timedelta(days=3), NOW) == "in 3 days"
    assert sunset_distance(NOW, NOW) == "passed less than a minute ago"
    assert sunset_distance(NOW - timedelta(hours=5), NOW) == "passed 5 hours ago"
