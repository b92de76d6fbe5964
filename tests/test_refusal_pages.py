"""edge's own answers, as a customer gets them: a short page with somewhere to go where there
is somewhere, or the JSON shape for a client that asks for JSON; 502 and 504 alike."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from edge.modes import MemoryStore
from tests.support.ports import bound_socket, free_port
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for
from tests.support.stack import run_edge

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
AS_JSON = {"Accept": "application/json"}
LEGACY_HOME = f"https://{LEGACY_HOST}/{{}}/"
NEW_HOME = f"https://{NEW_HOST}/{{}}/"
PAST = "2020-01-01T00:00:00Z"
MODES = {"swim": "setup", "dance": "active", "broken": "bogus"}


@contextmanager
def edge(
    backend: str = "http://127.0.0.1:9", store_url: str = "memory://", **sections: dict[str, Any]
) -> Iterator[httpx.Client]:
    """edge in front of ``backend`` (by default a closed port), with one tenant per mode."""
    store = MemoryStore() if store_url == "memory://" else None
    if store is not None:
        for tenant, mode in MODES.items():
            store.set_raw(tenant, mode)
    raw = settings_for(backend, backend, store_url, "pages:", **sections)
    with (
        run_edge(raw, store) as (_, public_url, _admin),
        httpx.Client(base_url=public_url, timeout=10) as client,
    ):
        yield client


def link_of(page: str) -> str | None:
    start = page.find('<a href="')
    return page[start + 9 : page.index('"', start + 9)] if start >= 0 else None


# status, method, host, path, edge's settings, the tenant, its mode, the link the page offers
CASES = [
    (403, "POST", NEW_HOST, "/swim/checkout", {}, "swim", "setup", LEGACY_HOME.format("swim")),
    (403, "POST", NEW_HOST, "/acme/checkout", {}, "acme", "legacy", LEGACY_HOME.format("acme")),
    (403, "POST", NEW_HOST, "/swim/checkout", {"policy": {"legacy_sunset": PAST}}, "swim", "setup", None),  # noqa: E501
    (410, "GET", LEGACY_HOST, "/swim/classes", {"policy": {"legacy_sunset": PAST}}, "swim", "setup", NEW_HOME.format("swim")),  # noqa: E501
    (410, "GET", LEGACY_HOST, "/acme/classes", {"policy": {"legacy_sunset": PAST}}, "acme", "legacy", None),  # noqa: E501
    (404, "GET", LEGACY_HOST, "/", {}, None, None, None),
    (421, "GET", "elsewhere.test", "/acme/", {}, None, None, None),
    (500, "GET", LEGACY_HOST, "/broken/", {}, "broken", "invalid", None),
    (502, "GET", LEGACY_HOST, "/acme/classes", {}, "acme", "legacy", None),
    (502, "POST", NEW_HOST, "/dance/checkout", {}, "dance", "active", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "method", "host", "path", "sections", "tenant", "mode", "home"), CASES
)
def test_a_browser_gets_a_short_page_with_the_way_on_and_a_client_asking_json_the_shape(
    status: int,
    method: str,
    host: str,
    path: str,
    sections: dict[str, Any],
    tenant: str | None,
    mode: str | None,
    home: str | None,
) -> None:
    with edge(**sections) as client:
        response = client.request(method, path, headers={"Host": host, **BROWSER})
        head = client.head(path, headers={"Host": host, **BROWSER}) if method == "GET" else None
        as_json = client.request(method, path, headers={"Host": host, **AS_JSON})
    assert response.status_code == status
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers.get("x-edge-mode") == mode
    page = response.text
    assert len(page) < 1024 and page.startswith("<!doctype html>")
    assert "<script" not in page
    assert link_of(page) == home
    assert page.count("<a ") == (home is not None)
    if head is not None:
        assert head.status_code == status and head.content == b""
    assert as_json.status_code == status
    assert as_json.headers["content-type"] == "application/json"
    body = as_json.json()
    assert body == {"error": body["error"], "tenant": tenant, "mode": mode}
    assert body["error"].endswith(".")


def test_a_portal_that_never_answers_gets_a_504_page_and_json() -> None:
    silent = bound_socket()
    silent.listen(8)  # connections wait in the backlog: nobody ever answers
    try:
        backend = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with edge(backend, upstream={"read_timeout": 0.3}) as client:
            page = client.get("/acme/", headers={"Host": LEGACY_HOST, **BROWSER})
            data = client.get("/acme/", headers={"Host": LEGACY_HOST, **AS_JSON})
    finally:
        silent.close()
    assert page.status_code == data.status_code == 504
    assert "did not answer in time" in page.text and link_of(page.text) is None
    assert data.json() == {"error": data.json()["error"], "tenant": "acme", "mode": "legacy"}


def test_a_store_outage_gets_a_503_page_and_json() -> None:
    with edge(store_url=f"redis://127.0.0.1:{free_port()}/0") as client:
        page = client.get("/acme/", headers={"Host": LEGACY_HOST, **BROWSER})
        data = client.get("/acme/", headers={"Host": LEGACY_HOST, **AS_JSON})
    assert page.status_code == data.status_code == 503
    assert page.headers["retry-after"] and "<!doctype html>" in page.text
    assert data.json() == {"error": data.json()["error"], "tenant": "acme", "mode": None}


def test_a_websocket_whose_portal_is_down_gets_the_same_answer() -> None:
    with edge() as client:
        port = int(str(client.base_url).rsplit(":", 1)[1])
        answers = [_handshake(port, accept) for accept in (BROWSER["Accept"], "application/json")]
    (page_status, page_headers, page), (data_status, data_headers, data) = answers
    assert page_status == data_status == 502
    assert page_headers["content-type"] == "text/html; charset=utf-8"
    assert b"could not be reached" in page
    assert data_headers["x-edge-mode"] == "active"
    assert json.loads(data) == {
        "error": json.loads(data)["error"],
        "tenant": "dance",
        "mode": "active",
    }


def _handshake(port: int, accept: str) -> tuple[int, dict[str, str], bytes]:
    lines = [
        "GET /dance/live HTTP/1.1",
        f"Host: {NEW_HOST}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        f"Accept: {accept}",
    ]
    received = b""
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall("\r\n".join([*lines, "", ""]).encode())
        while data := sock.recv(65536):
            received += data
    head, _, body = received.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    pairs = (field.partition(":") for field in fields)
    return int(status.split()[1]), {n.lower(): v.strip() for n, _, v in pairs}, body
