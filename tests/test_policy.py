"""The routing matrix of docs/routing.md, one row per cell, against the pure decide()."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from edge.core.tenants import Front, Mode, is_forward_move
from edge.routing.decide import (
    WEBSOCKET,
    Forward,
    Policy,
    Reason,
    Redirect,
    Refuse,
    decide,
    effective_method,
    judged_method,
    query_overrides,
    refusal_home,
)
from tests.support.settings import example_settings

SUNSET = datetime(2027, 6, 30, 22, 0, tzinfo=UTC)
BEFORE = datetime(2027, 1, 1, tzinfo=UTC)
AFTER = datetime(2027, 7, 1, tzinfo=UTC)

BASE_POLICY = {
    "legacy_sunset": "2027-06-30T22:00:00Z",
    "setup_allow": [
        {"method": "POST", "path": "/{tenant}/staff/login"},
        {"method": "POST", "path": "/{tenant}/staff/sso/*"},
    ],
    "path_rules": [
        {"from": "/{tenant}/classes", "to": "/{tenant}/schedule"},
        {"from": "/{tenant}/account/", "to": "/{tenant}/profile"},
    ],
}


def make_policy(**policy: object) -> Policy:
    return Policy.from_settings(example_settings(policy={**BASE_POLICY, **policy}))


def at(instant: datetime) -> Callable[[], datetime]:
    return lambda: instant


POLICY = make_policy()
PERMANENT = make_policy(redirect_status=301)

L, N = Front.LEGACY, Front.NEW
LEGACY, SETUP, ACTIVE = Mode.LEGACY, Mode.SETUP, Mode.ACTIVE
TO_NEW_HOME = Redirect("https://portal.example.com/acme/", 302)
TO_LEGACY_HOME = Redirect("https://parents.example.com/acme/", 302)

MATRIX = [
    # legacy front, before sunset
    (L, LEGACY, "GET", BEFORE, Forward(L)),
    (L, LEGACY, "POST", BEFORE, Forward(L)),
    (L, SETUP, "GET", BEFORE, Forward(L)),
    (L, SETUP, "DELETE", BEFORE, Forward(L)),
    (L, ACTIVE, "GET", BEFORE, TO_NEW_HOME),
    (L, ACTIVE, "HEAD", BEFORE, TO_NEW_HOME),
    (L, ACTIVE, "POST", BEFORE, Redirect(TO_NEW_HOME.location, 307)),
    (L, ACTIVE, "OPTIONS", BEFORE, Redirect(TO_NEW_HOME.location, 307)),
    # legacy front, after sunset
    (L, LEGACY, "GET", AFTER, Refuse(410, Reason.RETIRED, "")),
    (L, SETUP, "POST", AFTER, Refuse(410, Reason.RETIRED, "")),
    (L, ACTIVE, "GET", AFTER, TO_NEW_HOME),
    (L, LEGACY, "GET", SUNSET, Refuse(410, Reason.RETIRED, "")),
    # new front, safe methods
    (N, LEGACY, "GET", BEFORE, TO_LEGACY_HOME),
    (N, LEGACY, "HEAD", BEFORE, TO_LEGACY_HOME),
    (N, LEGACY, "OPTIONS", BEFORE, TO_LEGACY_HOME),
    (N, SETUP, "GET", BEFORE, Forward(N)),
    (N, SETUP, "HEAD", BEFORE, Forward(N)),
    (N, SETUP, "OPTIONS", BEFORE, Forward(N)),
    (N, ACTIVE, "GET", BEFORE, Forward(N)),
    (N, ACTIVE, "GET", AFTER, Forward(N)),
    # new front, other methods
    (N, LEGACY, "POST", BEFORE, Refuse(403, Reason.NOT_ENABLED, "")),
    (N, SETUP, "POST", BEFORE, Refuse(403, Reason.BLOCKED, "")),
    (N, SETUP, "PUT", BEFORE, Refuse(403, Reason.BLOCKED, "")),
    (N, SETUP, "PATCH", BEFORE, Refuse(403, Reason.BLOCKED, "")),
    (N, SETUP, "DELETE", BEFORE, Refuse(403, Reason.BLOCKED, "")),
    (N, SETUP, "get", BEFORE, Refuse(403, Reason.BLOCKED, "")),
    (N, SETUP, "PROPFIND", BEFORE, Refuse(403, Reason.BLOCKED, "")),
    (N, SETUP, "TRACE", BEFORE, Refuse(403, Reason.BLOCKED, "")),
    (N, ACTIVE, "POST", BEFORE, Forward(N)),
    (N, ACTIVE, "DELETE", AFTER, Forward(N)),
]


def _same(decision: object, expected: object) -> bool:
    if isinstance(expected, Refuse) and isinstance(decision, Refuse):
        return (decision.status, decision.reason) == (expected.status, expected.reason)
    return decision == expected


@pytest.mark.parametrize(("front", "mode", "method", "now", "expected"), MATRIX)
def test_routing_matrix(
    front: Front, mode: Mode, method: str, now: datetime, expected: object
) -> None:
    decision = decide(front, "acme", mode, method, "/acme/", b"", at(now), POLICY)
    assert _same(decision, expected), decision


@pytest.mark.parametrize("front", [L, N])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_invalid_stored_mode_is_an_error_and_never_a_write(front: Front, method: str) -> None:
    decision = decide(front, "acme", None, method, "/acme/", b"", at(BEFORE), POLICY)
    assert isinstance(decision, Refuse)
    assert decision.reason is Reason.MISCONFIGURED


def test_no_sunset_means_the_legacy_portal_keeps_working() -> None:
    policy = make_policy(legacy_sunset=None)
    far_future = datetime(2100, 1, 1, tzinfo=UTC)
    assert decide(L, "acme", LEGACY, "GET", "/acme/", b"", at(far_future), policy) == Forward(L)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/acme/staff/login", Forward(N)),
        ("POST", "/acme/staff/sso/callback", Forward(N)),
        ("PUT", "/acme/staff/login", None),
        ("POST", "/acme/staff/login/", None),
        ("POST", "/acme/STAFF/login", None),
        ("POST", "/other/staff/login", None),
        ("POST", "/acme/staff/sso", None),
        ("POST", "/acme/checkout", None),
    ],
)
def test_setup_allow_list(method: str, path: str, expected: Forward | None) -> None:
    decision = decide(N, "acme", SETUP, method, path, b"", at(BEFORE), POLICY)
    if expected is None:
        assert isinstance(decision, Refuse)
        assert decision.reason is Reason.BLOCKED
    else:
        assert decision == expected


def test_the_allow_list_does_not_open_writes_for_a_tenant_that_is_not_enabled() -> None:
    decision = decide(N, "acme", LEGACY, "POST", "/acme/staff/login", b"", at(BEFORE), POLICY)
    assert isinstance(decision, Refuse)
    assert decision.reason is Reason.NOT_ENABLED


@pytest.mark.parametrize(
    ("path", "query", "location"),
    [
        ("/acme/classes", "", "https://portal.example.com/acme/schedule"),
        ("/acme/classes/42", "", "https://portal.example.com/acme/schedule/42"),
        (
            "/acme/classes/42",
            "week=3&x=a+b",
            "https://portal.example.com/acme/schedule/42?week=3&x=a+b",
        ),
        ("/acme/classesX", "", "https://portal.example.com/acme/"),
        ("/acme/account/", "", "https://portal.example.com/acme/profile/"),
        ("/acme/account/billing", "", "https://portal.example.com/acme/profile/billing"),
        ("/acme/", "", "https://portal.example.com/acme/"),
        ("/acme/unknown/page", "ref=mail", "https://portal.example.com/acme/?ref=mail"),
        ("/acme/classes//evil.com", "", "https://portal.example.com/acme/schedule/evil.com"),
        ("/acme/classes/a b<c>", "", "https://portal.example.com/acme/schedule/a%20b%3Cc%3E"),
        ("/acme/classes/x", "a=<b> c", "https://portal.example.com/acme/schedule/x?a=%3Cb%3E%20c"),
    ],
)
def test_redirects_map_paths_by_the_ordered_rules(path: str, query: str, location: str) -> None:
    decision = decide(L, "acme", ACTIVE, "GET", path, query.encode(), at(BEFORE), POLICY)
    assert decision == Redirect(location, 302)


PRIVATE = replace(POLICY, private_preview=True)

PRIVATE_PREVIEW = [
    # (front, mode, method, path, holds a valid preview cookie, expected)
    (N, SETUP, "GET", "/acme/", True, Forward(N)),
    (N, SETUP, "HEAD", "/acme/classes", True, Forward(N)),
    (N, SETUP, "GET", "/acme/", False, TO_LEGACY_HOME),
    (N, SETUP, "OPTIONS", "/acme/", False, TO_LEGACY_HOME),
    (N, SETUP, "POST", "/acme/checkout", True, Refuse(403, Reason.BLOCKED, "")),
    (N, SETUP, "POST", "/acme/checkout", False, Refuse(403, Reason.BLOCKED, "")),
    (N, SETUP, "POST", "/acme/staff/login", False, Forward(N)),
    (N, LEGACY, "GET", "/acme/", True, TO_LEGACY_HOME),
    (N, LEGACY, "POST", "/acme/", True, Refuse(403, Reason.NOT_ENABLED, "")),
    (N, ACTIVE, "GET", "/acme/", False, Forward(N)),
    (N, ACTIVE, "POST", "/acme/checkout", False, Forward(N)),
    (L, SETUP, "GET", "/acme/", False, Forward(L)),
    (L, ACTIVE, "GET", "/acme/", False, TO_NEW_HOME),
]


@pytest.mark.parametrize(("front", "mode", "method", "path", "holder", "expected"), PRIVATE_PREVIEW)
def test_a_private_preview_is_served_only_to_preview_holders(
    front: Front, mode: Mode, method: str, path: str, holder: bool, expected: object
) -> None:
    decision = decide(front, "acme", mode, method, path, b"", at(BEFORE), PRIVATE, previewer=holder)
    assert _same(decision, expected), decision


@pytest.mark.parametrize("holder", [True, False])
def test_without_private_preview_the_preview_is_public(holder: bool) -> None:
    decision = decide(N, "acme", SETUP, "GET", "/acme/", b"", at(BEFORE), POLICY, previewer=holder)
    assert decision == Forward(N)


@pytest.mark.parametrize(
    ("method", "status", "policy"),
    [
        ("GET", 302, POLICY),
        ("HEAD", 302, POLICY),
        ("POST", 307, POLICY),
        ("PUT", 307, POLICY),
        ("GET", 301, PERMANENT),
        ("HEAD", 301, PERMANENT),
        ("POST", 308, PERMANENT),
        ("DELETE", 308, PERMANENT),
    ],
)
def test_redirect_status_by_method_and_config(method: str, status: int, policy: Policy) -> None:
    decision = decide(L, "acme", ACTIVE, method, "/acme/", b"", at(BEFORE), policy)
    assert isinstance(decision, Redirect)
    assert decision.status == status


def test_the_first_matching_rule_wins() -> None:
    policy = make_policy(
        path_rules=[
            {"from": "/{tenant}/classes/kids", "to": "/{tenant}/juniors"},
            {"from": "/{tenant}/classes", "to": "/{tenant}/schedule"},
        ]
    )
    kids = decide(L, "acme", ACTIVE, "GET", "/acme/classes/kids/1", b"", at(BEFORE), policy)
    other = decide(L, "acme", ACTIVE, "GET", "/acme/classes/adults", b"", at(BEFORE), policy)
    assert kids == Redirect("https://portal.example.com/acme/juniors/1", 302)
    assert other == Redirect("https://portal.example.com/acme/schedule/adults", 302)


def test_subdomain_portals_put_the_tenant_in_the_host_from_config_only() -> None:
    settings = example_settings(
        legacy={
            "hosts": ["*.parents.example.com"],
            "tenant": "subdomain",
            "public_url": "https://{tenant}.parents.example.com",
        },
        new={
            "public_url": "https://{tenant}.portal.example.com",
            "tenant": "subdomain",
            "hosts": ["*.portal.example.com"],
        },
    )
    policy = Policy.from_settings(settings)
    assert decide(L, "acme", ACTIVE, "GET", "/classes", b"", at(BEFORE), policy) == Redirect(
        "https://acme.portal.example.com/", 302
    )
    assert decide(N, "acme", LEGACY, "GET", "/", b"", at(BEFORE), policy) == Redirect(
        "https://acme.parents.example.com/", 302
    )


@pytest.mark.parametrize(
    ("method", "overrides", "judged"),
    [
        ("GET", [], "GET"),
        ("GET", ["GET"], "GET"),
        ("GET", ["HEAD"], "GET"),
        ("POST", ["GET"], "POST"),
        ("GET", ["POST"], "POST"),
        ("GET", ["delete"], "delete"),
        ("GET", [" PUT "], "PUT"),
        ("GET", [""], "POST"),
        ("HEAD", ["GET", "PATCH"], "PATCH"),
        ("POST", ["POST"], "POST"),
        ("POST", [""], "POST"),
        ("PUT", ["POST"], "PUT/POST"),
        ("POST", ["DELETE"], "POST/DELETE"),
    ],
)
def test_a_method_override_that_names_a_write_is_judged_as_that_write(
    method: str, overrides: list[str], judged: str
) -> None:
    assert effective_method(method, overrides) == judged


@pytest.mark.parametrize(
    ("method", "overrides", "query", "body", "judged"),
    [
        ("GET", [], b"", False, "GET"),
        ("GET", [], b"", True, "GET with a body"),
        ("OPTIONS", [], b"page=2", True, "OPTIONS with a body"),
        ("POST", [], b"", True, "POST"),
        ("GET", [], b"_method=delete", False, "DELETE"),
        ("GET", [], b"_method=get", True, "GET with a body"),
        ("POST", [], b"_method=DELETE", True, "POST/DELETE"),
        ("POST", ["PUT"], b"", True, "POST/PUT"),
        ("GET", ["GET"], b"_method=PATCH", False, "PATCH"),
        (WEBSOCKET, [], b"", False, WEBSOCKET),
        (WEBSOCKET, ["POST"], b"", False, "WEBSOCKET/POST"),
    ],
)
def test_what_a_request_is_judged_as(
    method: str, overrides: list[str], query: bytes, body: bool, judged: str
) -> None:
    assert judged_method(method, overrides, query=query, body=body) == judged


@pytest.mark.parametrize(
    ("query", "found"),
    [
        (b"", ()),
        (b"page=2&sort=name", ()),
        (b"_method=DELETE", ("DELETE",)),
        (b"_METHOD=put", ("PUT",)),
        (b"%5Fmethod=PUT", ("PUT",)),
        (b"_m%65thod=PUT", ("PUT",)),
        (b"_method[]=patch", ("PATCH",)),
        (b".method=DELETE", ("DELETE",)),
        (b"+_method=DELETE", ("DELETE",)),
        (b"a=1;_method=DELETE", ("DELETE",)),
        (b"_method=DEL%45TE", ("DELETE",)),
        (b"_method=+put+", ("PUT",)),
        (b"X-HTTP-Method-Override=DELETE", ("DELETE",)),
        (b"x_method=PUT&_method=GET", ("PUT", "GET")),
        (b"_method=", ()),
        (b"_method", ()),
        (b"method=DELETE&my_method=PUT&_methods=PUT", ()),
    ],
)
def test_query_parameters_read_as_a_method(query: bytes, found: tuple[str, ...]) -> None:
    assert query_overrides(query) == found


def test_a_websocket_is_a_write_that_the_allow_list_names_by_path() -> None:
    policy = make_policy(
        setup_allow=[
            {"method": "WEBSOCKET", "path": "/{tenant}/live"},
            {"method": "GET", "path": "/{tenant}/chat/*"},
        ]
    )
    for mode, path, expected in [
        (Mode.SETUP, "/acme/live", FORWARD_NEW),
        (Mode.SETUP, "/acme/chat/room-1", FORWARD_NEW),
        (Mode.SETUP, "/acme/checkout", BLOCKED),
        (Mode.LEGACY, "/acme/live", NOT_ENABLED),
        (Mode.ACTIVE, "/acme/checkout", FORWARD_NEW),
    ]:
        decision = decide(Front.NEW, "acme", mode, WEBSOCKET, path, b"", at(BEFORE), policy)
        assert _kind(decision) == expected, (mode, path)
    # A GET entry lets no write through: a GET with a body is not a GET.
    read = judged_method("GET", body=True)
    decision = decide(Front.NEW, "acme", Mode.SETUP, read, "/acme/chat/x", b"", at(BEFORE), policy)
    assert _kind(decision) == BLOCKED


FORWARD_NEW, BLOCKED, NOT_ENABLED = "forward new", "blocked", "not enabled"


def _kind(decision: object) -> str:
    if isinstance(decision, Forward):
        return FORWARD_NEW if decision.front is Front.NEW else "forward legacy"
    assert isinstance(decision, Refuse), decision
    return BLOCKED if decision.reason is Reason.BLOCKED else NOT_ENABLED


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (LEGACY, SETUP, True),
        (SETUP, ACTIVE, True),
        (LEGACY, ACTIVE, True),
        (ACTIVE, ACTIVE, True),
        (ACTIVE, SETUP, False),
        (SETUP, LEGACY, False),
        (ACTIVE, LEGACY, False),
        (None, LEGACY, True),
    ],
)
def test_moves_go_only_forward(current: Mode | None, target: Mode, allowed: bool) -> None:
    assert is_forward_move(current, target) is allowed


@pytest.mark.parametrize(
    ("stored", "mode"),
    [
        (None, LEGACY),
        ("legacy", LEGACY),
        ("setup", SETUP),
        (b"active", ACTIVE),
        ("ACTIVE", None),
        ("", None),
        ("activ", None),
        (" setup", None),
    ],
)
def test_stored_values(stored: str | bytes | None, mode: Mode | None) -> None:
    assert Mode.parse(stored) is mode


LEGACY_HOME = (L, "https://parents.example.com/acme/")
NEW_HOME = (N, "https://portal.example.com/acme/")


@pytest.mark.parametrize(
    ("reason", "mode", "now", "private_preview", "home"),
    [
        # A write refused on the new portal can be made on the Parent Portal, while it serves.
        (Reason.NOT_ENABLED, LEGACY, BEFORE, False, LEGACY_HOME),
        (Reason.BLOCKED, SETUP, BEFORE, False, LEGACY_HOME),
        (Reason.BLOCKED, SETUP, BEFORE, True, LEGACY_HOME),
        (Reason.NOT_ENABLED, LEGACY, AFTER, False, None),
        (Reason.BLOCKED, SETUP, AFTER, False, None),
        # A retired Parent Portal points at the preview where the customer may see it.
        (Reason.RETIRED, SETUP, AFTER, False, NEW_HOME),
        (Reason.RETIRED, SETUP, AFTER, True, None),
        (Reason.RETIRED, LEGACY, AFTER, False, None),
        (Reason.MISCONFIGURED, None, BEFORE, False, None),
    ],
)
def test_a_refusal_links_the_home_that_serves_the_customer_instead(
    reason: Reason,
    mode: Mode | None,
    now: datetime,
    private_preview: bool,
    home: tuple[Front, str] | None,
) -> None:
    policy = replace(POLICY, private_preview=private_preview)
    assert refusal_home(policy, reason, "acme", mode, now) == home
