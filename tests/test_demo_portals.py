"""The two demo portals of `edge demo`, each on a real loopback uvicorn, driven with httpx."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from edge import config
from edge.demo.portals import legacy_portal, new_portal, site
from edge.routing.decide import Policy
from tests.support.servers import ServerThread

BANNER = "Preview — read-only: bookings and checkout are not possible yet"


@pytest.fixture
def legacy() -> Iterator[httpx.Client]:
    with ServerThread(legacy_portal()) as server, httpx.Client(base_url=server.url) as client:
        yield client


@pytest.fixture
def new() -> Iterator[httpx.Client]:
    with ServerThread(new_portal()) as server, httpx.Client(base_url=server.url) as client:
        yield client


def mode(value: str) -> dict[str, str]:
    return {"X-Edge-Mode": value, "X-Edge-Tenant": "acme-gym"}


@pytest.mark.parametrize(
    "path", ["/acme-gym", "/acme-gym/", "/acme-gym/classes", "/acme-gym/classes/101",
             "/acme-gym/account", "/acme-gym/settings"],
)  # fmt: skip
def test_every_legacy_page_names_portal_tenant_and_mode(legacy: httpx.Client, path: str) -> None:
    response = legacy.get(path, headers=mode("setup"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "Acme Gym — Parent Portal" in page
    assert "<code>acme-gym</code>" in page
    assert "X-Edge-Mode <code>setup</code>" in page
    assert "Try: " in page and 'href="/acme-gym/classes"' in page
    assert BANNER not in page  # the preview banner is the new portal's alone


@pytest.mark.parametrize(
    "path", ["/acme-gym", "/acme-gym/", "/acme-gym/schedule", "/acme-gym/schedule/102",
             "/acme-gym/checkout", "/acme-gym/profile", "/acme-gym/staff/login"],
)  # fmt: skip
def test_every_new_page_names_portal_tenant_and_mode(new: httpx.Client, path: str) -> None:
    response = new.get(path, headers=mode("active"))
    assert response.status_code == 200
    page = response.text
    assert "Acme Gym — Customer Portal" in page
    assert "X-Edge-Mode <code>active</code>" in page
    assert 'href="/acme-gym/schedule"' in page


def test_home_pages_show_the_business_and_its_classes(
    legacy: httpx.Client, new: httpx.Client
) -> None:
    old_home = legacy.get("/swim-school-42/").text
    new_home = new.get("/swim-school-42/").text
    assert "Swim School 42" in old_home and "Swim School 42" in new_home
    assert 'href="/swim-school-42/classes/103">Street Dance' in old_home
    assert 'href="/swim-school-42/schedule/103">Street Dance' in new_home
    assert "X-Edge-Mode <code>(none)</code>" in old_home
    # Visibly different portals: not the same brand colour.
    assert "--brand:#1f3a5f" in old_home and "--brand:#1f3a5f" not in new_home


def test_healthz(legacy: httpx.Client, new: httpx.Client) -> None:
    for client in (legacy, new):
        response = client.get("/healthz")
        assert response.status_code == 200 and response.text == "ok"


def test_preview_banner_only_in_setup(new: httpx.Client) -> None:
    assert BANNER in new.get("/acme-gym/schedule", headers=mode("setup")).text
    for other in ("legacy", "active", "SETUP", ""):
        assert BANNER not in new.get("/acme-gym/schedule", headers=mode(other)).text
    assert BANNER not in new.get("/acme-gym/schedule").text


def test_settings_link_hidden_once_active(legacy: httpx.Client) -> None:
    link = 'href="/acme-gym/settings"'
    for shown in ("legacy", "setup"):
        nav = legacy.get("/acme-gym/", headers=mode(shown)).text.split("<main>")[0]
        assert link in nav
    page = legacy.get("/acme-gym/", headers=mode("active")).text
    assert link not in page.split("<footer>")[0]


def test_enroll_redirects_back_and_is_remembered_per_tenant(legacy: httpx.Client) -> None:
    response = legacy.post("/acme-gym/classes/101/enroll", data={"child": "Ann"})
    assert response.status_code == 303
    assert response.headers["location"] == "/acme-gym/classes/101?enrolled=1"
    page = legacy.get(response.headers["location"]).text
    assert "Enrolled — see you there!" in page
    assert "Your children enrolled: Ann" in page and "7 of 8 places left" in page
    assert "Ann — Toddler Splash" in legacy.get("/acme-gym/account").text
    # Another tenant's class is untouched.
    assert "8 of 8 places left" in legacy.get("/other-club/classes/101").text
    assert "No enrolments yet." in legacy.get("/other-club/account").text


def test_enroll_into_a_full_class_is_refused(legacy: httpx.Client) -> None:
    for child in ("A", "B"):
        assert legacy.post("/acme-gym/classes/104/enroll", data={"child": child}).is_redirect
    refused = legacy.post("/acme-gym/classes/104/enroll", data={"child": "C"})
    assert refused.status_code == 409 and "full" in refused.text
    assert "Your children enrolled: A, B" in legacy.get("/acme-gym/classes/104").text


def test_book_then_checkout(new: httpx.Client) -> None:
    booked = new.post("/acme-gym/schedule/102/book", headers=mode("active"))
    assert booked.status_code == 303 and booked.headers["location"] == "/acme-gym/checkout"
    basket = new.get("/acme-gym/checkout").text
    assert "<li>Junior Gymnastics</li>" in basket and "Basket (1)" in basket
    assert 'action="/acme-gym/checkout"' in basket
    paid = new.post("/acme-gym/checkout", headers=mode("active"))
    assert paid.status_code == 303 and paid.headers["location"] == "/acme-gym/checkout"
    after = new.get("/acme-gym/checkout").text
    assert "Confirmed: 1 booking(s)." in after and "Your basket is empty." in after


def test_new_portal_refuses_writes_itself_in_preview(new: httpx.Client) -> None:
    """Belt and braces behind the router: a preview write that slips through changes nothing."""
    for path in ("/acme-gym/schedule/101/book", "/acme-gym/checkout"):
        refused = new.post(path, headers=mode("setup"))
        assert refused.status_code == 403 and BANNER in refused.text
    assert "Your basket is empty." in new.get("/acme-gym/checkout").text


def test_staff_login(new: httpx.Client) -> None:
    form = new.get("/acme-gym/staff/login", headers=mode("setup")).text
    assert 'method="post" action="/acme-gym/staff/login"' in form
    # Allowed in preview by the router's allow-list, so the portal accepts it in setup too.
    signed_in = new.post(
        "/acme-gym/staff/login", data={"user": "coach@acme.test", "password": "x"},
        headers=mode("setup"),
    )  # fmt: skip
    assert signed_in.status_code == 200
    assert "Signed in as coach@acme.test" in signed_in.text


def test_hostile_tenant_segment_is_escaped(legacy: httpx.Client, new: httpx.Client) -> None:
    for client in (legacy, new):
        for path in ("/%3Cscript%3Ealert(1)%3C/script%3E/", "/%3Cscript%3E/classes"):
            response = client.get(path)
            assert response.status_code == 404
            assert "<script" not in response.text.lower()
            assert "&lt;script&gt;" in response.text


def test_hostile_headers_and_form_values_are_escaped(
    legacy: httpx.Client, new: httpx.Client
) -> None:
    evil = '<script>alert("x")</script>'
    headers = {"X-Edge-Mode": evil, "X-Edge-Tenant": evil}
    for client, path in ((legacy, "/acme-gym/"), (new, "/acme-gym/")):
        page = client.get(path, headers=headers).text
        assert "<script" not in page.lower() and "&lt;script&gt;" in page
    legacy.post("/acme-gym/classes/101/enroll", data={"child": evil})
    assert "<script" not in legacy.get("/acme-gym/classes/101").text.lower()
    assert "<script" not in legacy.get("/acme-gym/account").text.lower()
    signed_in = new.post("/acme-gym/staff/login", data={"user": evil}).text
    assert "<script" not in signed_in.lower() and "&lt;script&gt;" in signed_in


@pytest.mark.parametrize(
    ("portal", "path"),
    [("legacy", "/acme-gym/nope"), ("legacy", "/acme-gym/classes/999"),
     ("legacy", "/acme-gym/schedule"), ("legacy", "/"), ("legacy", "/acme-gym/classes/"),
     ("legacy", "/Acme-Gym/"), ("new", "/acme-gym/classes"), ("new", "/acme-gym/schedule/999"),
     ("new", "/acme-gym/settings"), ("new", "/")],
)  # fmt: skip
def test_unknown_paths_404_with_a_small_page(
    legacy: httpx.Client, new: httpx.Client, portal: str, path: str
) -> None:
    client = legacy if portal == "legacy" else new
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "404 Not Found" in response.text
    assert ("Parent Portal" if portal == "legacy" else "Customer Portal") in response.text


def test_wrong_method_and_oversized_form(legacy: httpx.Client, new: httpx.Client) -> None:
    wrong = legacy.get("/acme-gym/classes/101/enroll")
    assert wrong.status_code == 405 and "POST" in wrong.headers["allow"]
    assert legacy.post("/acme-gym/classes").status_code == 405
    too_big = legacy.post("/acme-gym/classes/101/enroll", data={"child": "x" * 20_000})
    assert too_big.status_code == 413
    assert "Your children enrolled: none yet" in legacy.get("/acme-gym/classes/101").text
    assert new.post("/acme-gym/staff/login", content=b"u" * 20_000).status_code == 413


def test_a_basket_and_its_bookings_are_their_visitors_own(new: httpx.Client) -> None:
    with httpx.Client(base_url=str(new.base_url)) as other:
        assert new.post("/acme-gym/schedule/102/book").status_code == 303
        assert "Basket (1)" in new.get("/acme-gym/schedule").text
        assert "Basket (0)" in other.get("/acme-gym/schedule").text
        assert "Your basket is empty." in other.get("/acme-gym/checkout").text
        assert new.post("/acme-gym/checkout").status_code == 303
        assert "Junior Gymnastics" in new.get("/acme-gym/profile").text
        assert "No bookings yet." in other.get("/acme-gym/profile").text
        # Another tenant's basket of the same visitor is its own too.
        assert "Basket (0)" in new.get("/other-club/schedule").text


def test_enrolments_are_their_visitors_own_and_places_everyones(legacy: httpx.Client) -> None:
    with httpx.Client(base_url=str(legacy.base_url)) as other:
        assert legacy.post("/acme-gym/classes/101/enroll", data={"child": "Ann"}).is_redirect
        page = other.get("/acme-gym/classes/101").text
        assert "7 of 8 places left" in page and "Ann" not in page
        assert "No enrolments yet." in other.get("/acme-gym/account").text
        assert "Ann — Toddler Splash" in legacy.get("/acme-gym/account").text


def test_a_visitor_gets_a_cookie_once_and_a_forged_one_is_replaced(new: httpx.Client) -> None:
    first = new.get("/acme-gym/")
    cookie = first.headers["set-cookie"]
    assert cookie.startswith("demo-visitor=") and "HttpOnly" in cookie and "Path=/" in cookie
    assert "set-cookie" not in new.get("/acme-gym/").headers
    for forged in ("x", "a" * 23, "<script>", "a b c d e f g h i j k", "a" * 21 + ";"):
        with httpx.Client(base_url=str(new.base_url), cookies={"demo-visitor": forged}) as c:
            fresh = c.get("/acme-gym/").headers["set-cookie"]
            value = fresh.removeprefix("demo-visitor=").split(";")[0]
            assert re.fullmatch(r"[A-Za-z0-9_-]{22}", value) and value != forged


def test_the_portals_forget_their_least_recent_visitors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(site, "MAX_VISITORS", 3)
    with ServerThread(new_portal()) as server:
        clients = [httpx.Client(base_url=server.url) for _ in range(4)]
        try:
            first = clients[0]
            assert first.post("/acme-gym/schedule/101/book").status_code == 303
            assert "Basket (1)" in first.get("/acme-gym/").text
            for client in clients[1:]:  # three more visitors: the first is forgotten
                client.get("/acme-gym/")
            assert "Basket (0)" in first.get("/acme-gym/").text
        finally:
            for client in clients:
                client.close()


def _links(page: str) -> list[str]:
    return re.findall(r'(?:href|action)="([^"]*)"', page)


@pytest.mark.parametrize(
    ("portal", "path"),
    [("legacy", p) for p in ("/acme-gym/", "/acme-gym/classes", "/acme-gym/classes/101",
                             "/acme-gym/account", "/acme-gym/settings", "/acme-gym/nope")]
    + [("new", p) for p in ("/acme-gym/", "/acme-gym/schedule", "/acme-gym/schedule/101",
                            "/acme-gym/checkout", "/acme-gym/profile", "/acme-gym/staff/login",
                            "/acme-gym/nope")],
)  # fmt: skip
def test_every_link_stays_on_the_tenant(
    legacy: httpx.Client, new: httpx.Client, portal: str, path: str
) -> None:
    """Behind edge the first path segment is the tenant: a link outside it (/healthz, say)
    would be read as another tenant's page."""
    page = (legacy if portal == "legacy" else new).get(path).text
    links = _links(page)
    assert links
    assert all(link.startswith("/acme-gym/") for link in links), links


def test_every_page_the_path_rules_lead_to_is_on_the_new_portal(
    legacy: httpx.Client, new: httpx.Client
) -> None:
    """Once a tenant is active, each Parent Portal page redirects through the demo's path
    rules to a Customer Portal page that exists, and its enrolment form to one that books;
    all but the photo gallery, the gap the demo's shadow parity is there to find."""
    policy = Policy.from_settings(config.load(config.DEMO_CONFIG, env={}))
    pages = {"/acme-gym/"}
    for page in ("/acme-gym/", "/acme-gym/classes/101", "/acme-gym/account"):
        pages.update(link for link in _links(legacy.get(page).text) if "/enroll" not in link)
    assert {"/acme-gym/classes", "/acme-gym/account", "/acme-gym/settings"} <= pages
    pages.remove("/acme-gym/gallery")
    assert legacy.get("/acme-gym/gallery").status_code == 200
    gap = policy.new_path("acme-gym", "/acme-gym/gallery")
    assert new.get(gap, headers=mode("active")).status_code == 404
    for page in sorted(pages):
        target = policy.new_path("acme-gym", page)
        assert new.get(target, headers=mode("active")).status_code == 200, (page, target)
    enrol = policy.new_path("acme-gym", "/acme-gym/classes/101/enroll")
    booked = new.post(enrol, data={"child": "Ann"}, headers=mode("active"))
    assert booked.status_code == 303 and booked.headers["location"] == "/acme-gym/checkout"
    assert "Toddler Splash" in new.get("/acme-gym/checkout").text
