"""Private preview: signed, expiring, per-tenant links and cookies; the preview for staff only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from edge import config
from edge.preview import COOKIE_PREFIX, PreviewGate

NOW = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
SECRET = "preview-secret-0123456789"


def settings(**sections: dict[str, Any]) -> config.Settings:
    raw: dict[str, Any] = {
        "legacy": {
            "hosts": ["parents.example.com"],
            "backend": "http://legacy.internal:8000",
            "public_url": "https://parents.example.com",
        },
        "new": {
            "hosts": ["portal.example.com"],
            "backend": "http://new.internal:8000",
            "public_url": "https://portal.example.com",
        },
        "policy": {"private_preview": True, "preview_ttl": "7d"},
        "admin": {"preview_secret": SECRET},
    }
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return config.from_mapping(raw)


GATE = PreviewGate(settings())


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
    other_secret = PreviewGate(settings(admin={"preview_secret": "another-secret-0123456789"}))
    assert other_secret.expiry(token, "acme", NOW) is None


def test_the_admin_token_signs_when_there_is_no_preview_secret() -> None:
    gate = PreviewGate(settings(admin={"preview_secret": "", "token": "admin-token-0123456789"}))
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
    gate = PreviewGate(
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
