"""The dashboard in a real headless Chromium (Debian's), driven by Playwright, with the router.

It logs in with the token, searches, opens a tenant, moves it to setup through the
confirmation, and sees the router follow. Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.redis import RedisServer
from tests.support.settings import ADMIN_TOKEN, NEW_HOST
from tests.support.stack import Stack, stack
from tests.support.waiting import eventually

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).with_name("artifacts")
SEEDED = {
    "acme-gym": "legacy",  # rolled back once, so it has a key
    "acme-pool": "active",
    "bright-dance": "setup",
    "city-swim": "active",
    "harbour-yoga": "setup",
    "kids-karate": "legacy",
    "north-tennis": "active",
    "odd-gym": "Active",  # a raw edit gone wrong
    "riverside-climb": "setup",
    "sunny-ballet": "active",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def edge(redis_server: RedisServer, prefix: str) -> Iterator[Stack]:
    for tenant, mode in SEEDED.items():
        redis_server.cli("SET", f"{prefix}mode:{tenant}", mode)
    sunset = datetime.now(UTC).replace(microsecond=0) + timedelta(days=142, hours=6, minutes=30)
    with stack(redis_server.url, prefix, policy={"legacy_sunset": sunset}) as running:
        yield running


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def new_front_status(edge: Stack, tenant: str) -> int:
    with edge.client() as client:
        return client.get(f"/{tenant}/", headers={"Host": NEW_HOST}).status_code


def test_log_in_search_move_to_setup_and_the_router_follows(edge: Stack, page: Page) -> None:
    assert new_front_status(edge, "acme-gym") == 302  # legacy: the new portal is not enabled

    page.goto(edge.admin_url)
    expect(page).to_have_url(f"{edge.admin_url}/login?next=%2F")
    page.get_by_label("Your name").fill("alice")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()

    expect(page).to_have_url(f"{edge.admin_url}/")
    expect(page.locator("#count-active strong")).to_have_text("4")
    expect(page.locator("#count-invalid strong")).to_have_text("1")
    expect(page.locator("#sunset")).to_contain_text("in 142 days, 6 hours")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)

    page.get_by_label("Tenant id contains").fill("acme")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("#tenants tbody tr")
    expect(rows).to_have_count(2)
    page.get_by_role("link", name="acme-gym", exact=True).click()

    expect(page.locator("#mode")).to_have_text("legacy")
    page.get_by_role("button", name="Move to setup").click()
    consequences = page.locator("#consequences")
    expect(consequences).to_contain_text(
        f"The Customer Portal opens as a read-only preview at https://{NEW_HOST}/acme-gym/"
    )
    expect(consequences).to_contain_text("Parents keep using the Parent Portal")
    page.screenshot(path=ARTIFACTS / "dashboard-confirm.png", full_page=True)
    page.get_by_role("button", name="Move acme-gym to setup").click()

    expect(page.get_by_role("status")).to_contain_text("Done: acme-gym is now setup")
    expect(page.locator("#history tbody tr").first).to_contain_text("dashboard:alice")
    page.screenshot(path=ARTIFACTS / "dashboard-tenant.png", full_page=True)
    eventually(lambda: new_front_status(edge, "acme-gym") == 200)
    assert edge.new.seen[-1].path == "/acme-gym/"
    assert edge.new.seen[-1].header("x-edge-mode") == "setup"


def test_a_rollback_cannot_be_confirmed_without_the_force_box(edge: Stack, page: Page) -> None:
    page.goto(f"{edge.admin_url}/tenants/city-swim")
    page.get_by_label("Your name").fill("bob")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()

    expect(page).to_have_url(f"{edge.admin_url}/tenants/city-swim")
    page.get_by_role("button", name="Roll back to setup").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(
        "Roll city-swim back from active to setup?"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard-rollback.png", full_page=True)
    page.get_by_role("button", name="Roll back city-swim to setup").click()
    expect(page).to_have_url(f"{edge.admin_url}/tenants/city-swim/move?to=setup")  # not sent
    page.get_by_label("Yes, force city-swim back from active to setup.").check()
    page.get_by_role("button", name="Roll back city-swim to setup").click()

    expect(page.get_by_role("status")).to_contain_text("Done: city-swim is now setup")
    with httpx.Client(base_url=edge.public_url) as client:
        eventually(
            lambda: client.get("/city-swim/", headers={"Host": "parents.test"}).status_code == 200
        )
