"""Private preview: signed, expiring, per-tenant links and cookies; the preview for staff only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from edge import config
from edge.routing.decide import Policy
from edge.routing.preview import COOKIE_PREFIX, PreviewGate
from tests.support.cli import cli_config, run_cli
from tests.support.dashboard import log_in, text_of
from tests.support.redis import RedisServer, prefix_with_modes
from tests.support.settings import LEGACY_HOST, NEW_HOST, example_settings, merged
from tests.support.stack import Stack, stack

NOW = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
SECRET = "preview-secret-0123456789"


def settings(**sections: dict[str, Any]) -> config.Settings:
    """The example fronts with a private preview; ``sections`` laid over it."""
    preview = {
        "policy": {"private_preview": True, "preview_ttl": "7d"},
        "admin": {"preview_secret": SECRET},
    }
    return example_settings(**merged(preview, sections))


def gate_for(settings: config.Settings) -> PreviewGate:
    return PreviewGate(settings, Policy.from_settings(settings))


GATE = gate_for(settings())


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["edge-preview"][0]


def test_a_link_opens_the_tenant_home_on_the_new_portal_until_it_expires() -> None:
    link = GATE.link("acme", NOW)
    assert link.url.startswith("https://portal.example.com/acme/?edge-preview=acme.")
    assert link.expires == NOW + timedelta(days=7)
    token = token_of(link.url)
    assert GATE.expiry(token, "acme", NOW) == int(link.expires.timestamp())
    assert GATE.expiry(token, "acme", link.expires - timedelta(seconds=1)) is not None
    assert GATE.expiry(token, "acme", link.expires) is None


def test_a_link_can_be_given_its_own_lifetime() -> None:
    link = GATE.link("acme", NOW, ttl=3600)
    assert link.expires == NOW + timedelta(hours=1)
    assert GATE.expiry(token_of(link.url), "acme", NOW + timedelta(hours=2)) is None


@pytest.mark.parametrize(
    "forge",
    [
        lambda token: token.replace("acme.", "other.", 1),  # another tenant's name
        lambda token: token.replace(".", ".9", 1),  # a later expiry
        lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # signature
        lambda token: token.rpartition(".")[0],  # no signature
        lambda token: "",
        lambda token: "acme.99999999999",
    ],
)
def test_a_tampered_token_opens_nothing(forge: Any) -> None:
    token = token_of(GATE.link("acme", NOW).url)
    assert GATE.expiry(forge(token), "acme", NOW) is None
    assert GATE.expiry(forge(token), "other", NOW) is None


def test_a_token_is_for_its_tenant_and_its_secret_only() -> None:
    token = token_of(GATE.link("acme", NOW).url)
    assert GATE.expiry(token, "acme-gym", NOW) is None
    other_secret = gate_for(settings(admin={"preview_secret": "another-secret-0123456789"}))
    assert other_secret.expiry(token, "acme", NOW) is None


def test_the_admin_token_signs_when_there_is_no_preview_secret() -> None:
    gate = gate_for(settings(admin={"preview_secret": "", "token": "admin-token-0123456789"}))
    token = token_of(gate.link("acme", NOW).url)
    assert gate.expiry(token, "acme", NOW) is not None
    assert GATE.expiry(token, "acme", NOW) is None
    assert "admin-token" not in token


def test_opening_a_link_sets_a_scoped_cookie_and_goes_on_to_the_clean_url() -> None:
    token = token_of(GATE.link("acme", NOW).url)
    query = f"week=3&edge-preview={token}&x=a%20b".encode()
    grant = GATE.grant("acme", "/acme/classes", query, NOW)
    assert grant is not None
    assert grant.location == "https://portal.example.com/acme/classes?week=3&x=a%20b"
    cookie = grant.set_cookie.decode()
    assert cookie.startswith(f"{COOKIE_PREFIX}acme={token}; ")
    attributes = set(cookie.split("; ")[1:])
    assert attributes == {
        f"Max-Age={7 * 86400}",
        "Path=/acme",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
    }


@pytest.mark.parametrize(
    ("query", "tenant"),
    [
        (b"week=3", "acme"),  # no link
        (b"edge-preview=forged", "acme"),
        (b"edge-preview=", "acme"),
        (None, "other"),  # acme's link, opened for another tenant
    ],
)
def test_anything_but_a_valid_link_grants_nothing(query: bytes | None, tenant: str) -> None:
    if query is None:
        query = f"edge-preview={token_of(GATE.link('acme', NOW).url)}".encode()
    assert GATE.grant(tenant, f"/{tenant}/", query, NOW) is None


def test_over_plain_http_the_cookie_is_not_secure_and_subdomain_tenants_get_path_root() -> None:
    gate = gate_for(
        settings(
            new={
                "hosts": ["*.portal.example.com"],
                "tenant": "subdomain",
                "public_url": "http://{tenant}.portal.example.com",
            }
        )
    )
    link = gate.link("acme", NOW)
    assert link.url.startswith("http://acme.portal.example.com/?edge-preview=")
    grant = gate.grant("acme", "/", urlsplit(link.url).query.encode(), NOW)
    assert grant is not None
    assert grant.location == "http://acme.portal.example.com/"
    attributes = set(grant.set_cookie.decode().split("; ")[1:])
    assert "Path=/" in attributes
    assert "Secure" not in attributes


def test_a_request_holds_the_preview_only_with_a_valid_cookie_for_its_tenant() -> None:
    token = token_of(GATE.link("acme", NOW).url)
    name = f"{COOKIE_PREFIX}acme"

    def headers(*cookies: str) -> list[tuple[bytes, bytes]]:
        return [(b"host", b"portal.example.com"), *((b"cookie", c.encode()) for c in cookies)]

    assert GATE.holds("acme", headers(f"session=1; {name}={token}; theme=dark"), NOW)
    assert GATE.holds("acme", headers("session=1", f"{name}={token}"), NOW)
    assert not GATE.holds("acme", headers(), NOW)
    assert not GATE.holds("acme", headers(f"{name}=forged"), NOW)
    assert not GATE.holds("acme", headers(f"{name}={token}"), NOW + timedelta(days=8))
    assert not GATE.holds("other", headers(f"{COOKIE_PREFIX}other={token}"), NOW)
    assert not GATE.holds("acme", headers(f"x{name}={token}"), NOW)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"admin": {"preview_secret": ""}},
            "admin.preview_secret: policy.private_preview needs a secret to sign preview links",
        ),
        ({"admin": {"preview_secret": "short"}}, "admin.preview_secret: must be at least 16"),
        ({"policy": {"preview_ttl": "soon"}}, "policy.preview_ttl: 'soon' is not a duration"),
        ({"policy": {"preview_ttl": 0}}, "policy.preview_ttl: Input should be greater than 0"),
        ({"policy": {"preview_ttl": "-1d"}}, "policy.preview_ttl: '-1d' is not a duration"),
    ],
)
def test_a_private_preview_config_without_what_it_needs_is_refused(
    sections: dict[str, dict[str, Any]], message: str
) -> None:
    with pytest.raises(config.ConfigError, match=message):
        settings(**sections)


@pytest.mark.parametrize(
    ("ttl", "seconds"), [("7d", 604800), ("12h", 43200), ("90m", 5400), ("45s", 45), (3600, 3600)]
)
def test_preview_lifetimes_are_read_with_units(ttl: str | int, seconds: float) -> None:
    assert settings(policy={"preview_ttl": ttl}).policy.preview_ttl == seconds


# End to end: real uvicorn, real Redis, recording backends.

NEW = {"Host": NEW_HOST}


@pytest.fixture(scope="module")
def private(redis_server: RedisServer) -> Iterator[Stack]:
    prefix = prefix_with_modes(redis_server, {"acme": "setup", "other": "setup", "dance": "active"})
    with stack(redis_server.url, prefix, policy={"private_preview": True}) as running:
        yield running


def cookie(tenant: str, token: str) -> dict[str, str]:
    return {**NEW, "Cookie": f"theme=dark; {COOKIE_PREFIX}{tenant}={token}"}


def preview_token(edge: Stack, tenant: str, expires: datetime | None = None) -> str:
    gate = gate_for(edge.edge.settings)
    return gate.token(tenant, expires or datetime.now(UTC) + timedelta(hours=1))


def test_without_a_preview_cookie_a_private_preview_sends_customers_to_the_legacy_portal(
    private: Stack,
) -> None:
    seen = private.reached_backend()
    with private.client() as client:
        response = client.get("/acme/classes", headers=NEW)
        head = client.head("/acme/", headers=NEW)
    assert response.status_code == 302
    assert response.headers["location"] == f"https://{LEGACY_HOST}/acme/"
    assert response.headers["cache-control"] == "no-store"
    assert head.status_code == 302
    assert private.reached_backend() == seen


def test_a_preview_link_sets_the_cookie_and_the_preview_is_served_to_its_holder(
    private: Stack,
) -> None:
    link = gate_for(private.edge.settings).link("acme", datetime.now(UTC), ttl=3600)
    url = urlsplit(link.url)
    assert url.netloc == NEW_HOST
    with private.client() as client:
        opened = client.get(f"{url.path}?{url.query}&week=3", headers=NEW)
        assert opened.status_code == 302
        assert opened.headers["location"] == f"https://{NEW_HOST}/acme/?week=3"
        set_cookie = opened.headers["set-cookie"]
        name_value, *attributes = set_cookie.split("; ")
        assert name_value == f"{COOKIE_PREFIX}acme={token_of(link.url)}"
        assert {"HttpOnly", "Secure", "SameSite=Lax", "Path=/acme"} <= set(attributes)

        served = client.get("/acme/classes?week=3", headers=cookie("acme", token_of(link.url)))
    assert served.status_code == 200
    assert served.json() == {"backend": "new", "path": "/acme/classes"}
    seen = private.new.seen[-1]
    assert seen.header("x-edge-mode") == "setup"
    assert seen.query == "week=3"


@pytest.mark.parametrize(
    "forge",
    [
        lambda edge: "acme.99999999999.forged",
        lambda edge: preview_token(edge, "acme", datetime.now(UTC) - timedelta(seconds=5)),
        lambda edge: preview_token(edge, "other"),
        lambda edge: gate_for(
            config.from_mapping(
                {
                    **edge.edge.settings.model_dump(by_alias=True),
                    "admin": {"preview_secret": "someone-elses-secret-0123"},
                }
            )
        ).token("acme", datetime.now(UTC) + timedelta(hours=1)),
    ],
    ids=["forged", "expired", "other-tenant", "other-secret"],
)
def test_a_forged_expired_or_other_tenants_cookie_or_link_gets_nothing(
    private: Stack, forge: Any
) -> None:
    token = forge(private)
    seen = private.reached_backend()
    with private.client() as client:
        by_cookie = client.get("/acme/", headers=cookie("acme", token))
        by_link = client.get(f"/acme/?edge-preview={token}", headers=NEW)
    for response in (by_cookie, by_link):
        assert response.status_code == 302
        assert response.headers["location"] == f"https://{LEGACY_HOST}/acme/"
        assert "set-cookie" not in response.headers
    assert private.reached_backend() == seen


def test_another_tenants_valid_cookie_opens_only_that_tenant(private: Stack) -> None:
    other = preview_token(private, "other")
    with private.client() as client:
        assert client.get("/other/", headers=cookie("other", other)).status_code == 200
        assert client.get("/acme/", headers=cookie("other", other)).status_code == 302


def test_writes_stay_blocked_for_preview_holders(private: Stack) -> None:
    holder = cookie("acme", preview_token(private, "acme"))
    seen = private.reached_backend()
    with private.client() as client:
        post = client.post("/acme/checkout", headers=holder, content=b"pay=1")
        delete = client.delete("/acme/bookings/1", headers=holder)
        login = client.post("/acme/staff/login", headers=holder, content=b"user=ana")
    assert (post.status_code, delete.status_code) == (403, 403)
    assert login.status_code == 200  # the setup allow-list still applies
    assert private.reached_backend() == seen + 1


def test_active_tenants_need_no_preview_cookie(private: Stack) -> None:
    with private.client() as client:
        assert client.get("/dance/", headers=NEW).status_code == 200


def test_staff_get_a_link_from_the_cli(tmp_path: Path) -> None:
    config_file = tmp_path / "edge.toml"
    config_file.write_text(
        cli_config("memory://", "edge:")
        + '[policy]\nprivate_preview = true\npreview_ttl = "7d"\n'
        + f'[admin]\npreview_secret = "{SECRET}"\n'
    )
    before = datetime.now(UTC)
    made = run_cli("tenant", "preview-link", "acme", "--ttl", "2h", "--config", str(config_file))
    assert made.returncode == 0, made.stderr
    link = made.stdout.strip()
    assert link.startswith("https://portal.example.com/acme/?edge-preview=acme.")
    gate = gate_for(config.load(config_file, env={}))
    expires = gate.expiry(token_of(link), "acme", before)
    assert expires is not None
    assert before + timedelta(hours=2) - timedelta(seconds=1) <= datetime.fromtimestamp(
        expires, UTC
    )
    assert gate.expiry(token_of(link), "acme", before + timedelta(hours=3)) is None
    assert "for acme while it is in setup" in made.stderr

    bad = run_cli("tenant", "preview-link", "acme", "--ttl", "soon", "--config", str(config_file))
    assert bad.returncode == 2
    assert "'soon' is not a duration" in bad.stderr


def test_the_cli_says_when_no_link_is_needed(tmp_path: Path) -> None:
    config_file = tmp_path / "edge.toml"
    config_file.write_text(cli_config("memory://", "edge:"))
    refused = run_cli("tenant", "preview-link", "acme", "--config", str(config_file))
    assert refused.returncode == 1
    assert "private_preview is off" in refused.stderr
    assert refused.stdout == ""


def test_the_dashboard_gives_staff_a_working_link_for_a_setup_tenant(private: Stack) -> None:
    with log_in(private) as admin:
        page = admin.get("/tenants/acme")
        found = re.search(r'id="preview-link">.*?<a href="([^"]+)"', page.text, re.S)
        assert found is not None, "no preview link on the page"
        assert "The preview is private." in text_of(page)
        assert 'id="preview-link"' not in admin.get("/tenants/dance").text  # active: public
    link = urlsplit(unescape(found.group(1)))
    assert (link.scheme, link.netloc, link.path) == ("https", NEW_HOST, "/acme/")
    with private.client() as client:
        opened = client.get(f"{link.path}?{link.query}", headers=NEW)
        assert opened.status_code == 302
        token = opened.headers["set-cookie"].split(";")[0].partition("=")[2]
        assert client.get("/acme/", headers=cookie("acme", token)).status_code == 200
