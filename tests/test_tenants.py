"""Resolve: which front a Host belongs to and which tenant a request is for."""

from __future__ import annotations

from urllib.parse import quote, unquote

import pytest

from edge import config
from edge.core.tenants import Front, is_tenant_id
from edge.routing.resolve import Resolver, is_safe_path


def resolver(
    legacy: dict[str, object] | None = None, new: dict[str, object] | None = None
) -> Resolver:
    raw = {
        "legacy": {
            "hosts": ["parents.example.com", "localhost:8080"],
            "backend": "http://127.0.0.1:1",
            "public_url": "https://parents.example.com",
            **(legacy or {}),
        },
        "new": {
            "hosts": ["portal.example.com"],
            "backend": "http://127.0.0.1:2",
            "public_url": "https://portal.example.com",
            **(new or {}),
        },
    }
    return Resolver(config.from_mapping(raw))


@pytest.mark.parametrize(
    ("host", "front"),
    [
        ("parents.example.com", Front.LEGACY),
        ("PARENTS.Example.COM", Front.LEGACY),
        ("parents.example.com:443", Front.LEGACY),
        ("localhost:8080", Front.LEGACY),
        ("portal.example.com", Front.NEW),
        ("portal.example.com:8443", Front.NEW),
        ("evil.example.com", None),
        ("", None),
        ("parents.example.com.evil.com", None),
        ("localhost", None),
    ],
)
def test_front_by_host(host: str, front: Front | None) -> None:
    found = resolver().front[host.encode()]
    assert (found.front if found else None) is front


@pytest.mark.parametrize(
    ("path", "tenant"),
    [
        ("/acme-gym/classes", "acme-gym"),
        ("/acme-gym", "acme-gym"),
        ("/acme-gym/", "acme-gym"),
        ("/a", "a"),
        ("/0pool", "0pool"),
        ("/", None),
        ("//acme-gym", None),
        ("/Acme-Gym/classes", None),
        ("/-acme/", None),
        ("/acme_gym/", None),
        ("/acme.gym/", None),
        ("/" + "a" * 63 + "/", "a" * 63),
        ("/" + "a" * 64 + "/", None),
        ("/acme%2Dgym/", None),
    ],
)
def test_tenant_from_the_first_path_segment(path: str, tenant: str | None) -> None:
    front = resolver().front[b"parents.example.com"]
    assert front is not None
    assert front.tenant_of(b"parents.example.com", path, None) == tenant


@pytest.mark.parametrize(
    ("path", "raw_path", "tenant"),
    [
        ("/acme/x", b"/acme/x", "acme"),
        ("/acme/x y", b"/acme/x%20y", "acme"),
        ("/acme/x", b"/%61cme/x", None),
        ("/acme/x", b"/acm%65/x", None),
        ("/acme", b"/%61cme", None),
    ],
)
def test_the_tenant_segment_must_be_sent_as_it_is(
    path: str, raw_path: bytes, tenant: str | None
) -> None:
    front = resolver().front[b"parents.example.com"]
    assert front is not None
    assert front.tenant_of(b"parents.example.com", path, None, raw_path) == tenant


@pytest.mark.parametrize(
    ("host", "tenant"),
    [
        ("acme.portal.example.com", "acme"),
        ("acme.portal.example.com:8443", "acme"),
        ("ACME.portal.example.com", "acme"),
        ("a.b.portal.example.com", None),
        ("under_score.portal.example.com", None),
    ],
)
def test_tenant_from_a_subdomain(host: str, tenant: str | None) -> None:
    found = resolver(
        new={
            "hosts": ["*.portal.example.com"],
            "tenant": "subdomain",
            "public_url": "https://{tenant}.portal.example.com",
        }
    )
    front = found.front[host.encode()]
    if tenant is None and front is None:
        return
    assert front is not None and front.front is Front.NEW
    assert front.tenant_of(host.encode(), "/anything", None) == tenant


@pytest.mark.parametrize(
    ("header", "tenant"),
    [("acme", "acme"), (" acme ", "acme"), ("ACME", None), ("", None), (None, None)],
)
def test_tenant_from_a_header(header: str | None, tenant: str | None) -> None:
    front = resolver(new={"tenant": "header", "tenant_header": "X-Business"}).front[
        b"portal.example.com"
    ]
    assert front is not None
    assert front.header == "x-business"
    sent = None if header is None else header.encode()
    assert front.tenant_of(b"portal.example.com", "/x", sent) == tenant


@pytest.mark.parametrize(
    ("path", "safe"),
    [
        ("/acme/classes", True),
        ("/acme/classes/", True),
        ("/acme/a.b/c..d", True),
        ("/acme/x;y=1", True),
        ("/acme/caf\u00e9", True),
        ("/acme/../other/x", False),
        ("/acme/./x", False),
        ("/acme/..", False),
        ("/..", False),
        ("/acme/..;/other", False),
        ("/acme/.;x/other", False),
        ("/acme/x%2Fy", False),
        ("/acme/x%2fy", False),
        ("/acme/x%5Cy", False),
        ("/acme/%2e%2e/other", False),
        ("/acme/%2E./other", False),
        ("/acme\\..\\other", False),
        ("/acme/\uff0e\uff0e/other", False),
        ("/acme\uff0f..\uff0fother", False),
        ("/acme/\uff3c..", False),
        ("/acme/\x00", False),
        ("/acme/\r\n", False),
        ("acme/x", False),
    ],
)
def test_paths_that_could_change_the_tenant_are_not_safe(path: str, safe: bool) -> None:
    """Decoded paths, each sent percent-encoded: a "%2e" left after decoding was "%252e"."""
    assert is_safe_path(path, quote(path, safe="/;\\").encode()) is safe


@pytest.mark.parametrize(
    ("path", "raw_path", "safe"),
    [
        ("/acme/a/b", b"/acme/a%2fb", False),
        ("/acme/a/b", b"/acme/a%2Fb", False),
        ("/acme/a\\b", b"/acme/a%5cb", False),
        ("/acme/a b", b"/acme/a%20b", True),
        ("/acme/50%", b"/acme/50%25", True),
        ("/acme/login", b"/acme/%6cogin", True),
    ],
)
def test_an_encoded_separator_is_not_safe(path: str, raw_path: bytes, safe: bool) -> None:
    assert is_safe_path(path, raw_path) is safe


@pytest.mark.parametrize(
    "raw_path",
    [
        # IIS's %uXXXX, and any "%" that starts no two hex digits: no encoding at all.
        *(b"/acme/%u002e%u002e/other", b"/acme/%U002E%U002E/other", b"/acme/.%u002e/x"),
        *(b"/acme/%u2215x", b"/acme/50%", b"/acme/%zz", b"/acme/%2", b"/acme/%%32%65"),
        # Overlong UTF-8: a lenient decoder reads a dot or a slash; and other invalid UTF-8.
        *(b"/acme/%c0%ae%c0%ae/other", b"/acme/%e0%80%ae%e0%80%ae/other", b"/acme/%C0%AF"),
        *(b"/acme/%f0%80%80%ae", b"/acme/%c1%9c", b"/acme/%ed%a0%80", b"/acme/%ff", b"/acme/%80"),
        # Decoded once, still encoded: a backend that decodes twice reads something else.
        *(b"/acme/%25u002e%25u002e/other", b"/acme/%25c0%25ae", b"/acme/%2541", b"/acme/%252f"),
    ],
)
def test_malformed_overlong_and_double_encodings_are_not_safe(raw_path: bytes) -> None:
    """The path as uvicorn decodes it (UTF-8, errors replaced) beside the path as sent."""
    assert not is_safe_path(unquote(raw_path.decode()), raw_path)


@pytest.mark.parametrize(
    "raw_path", [b"/acme/caf%C3%A9", b"/acme/%EF%BF%BD", b"/acme/%F0%9F%8E%89", b"/acme/100%25"]
)
def test_well_formed_utf8_and_a_single_percent_sign_are_safe(raw_path: bytes) -> None:
    """U+FFFD itself, percent-encoded, is valid UTF-8: only a sequence that is not is refused."""
    assert is_safe_path(unquote(raw_path.decode()), raw_path)


@pytest.mark.parametrize("value", ["a", "acme-gym", "0", "a-" * 31 + "a"])
def test_valid_tenant_ids(value: str) -> None:
    assert is_tenant_id(value)


@pytest.mark.parametrize("value", ["", "-a", "A", "a_b", "a.b", "a/b", "a" * 64, "ä", "a\n"])
def test_invalid_tenant_ids(value: str) -> None:
    assert not is_tenant_id(value)
