"""The admin listener attacked as a hostile client would: every answer is the admin API's one
JSON error shape, bounded, and nothing changes that should not.

On a real edge on loopback (uvicorn configured as `edge serve` does, edge's own HTTP protocol,
the embedded store); the bulk move's guard on an admin app of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from edge.core.refusals import QUOTED_MAX
from tests.stack import ADMIN_TOKEN, Stack, stack
from tests.support import unique_prefix

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
