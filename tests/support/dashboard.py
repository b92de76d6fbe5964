"""The dashboard as a person uses it: logged in, forms with their CSRF token, the words read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape

import httpx

from tests.support.settings import ADMIN_TOKEN
from tests.support.stack import Stack


@contextmanager
def log_in(edge: Stack, name: str = "alice") -> Iterator[httpx.Client]:
    """A client of the admin listener with a dashboard session for ``name``."""
    with edge.admin() as client:
        response = client.post("/login", data={"name": name, "token": ADMIN_TOKEN, "next": "/"})
        assert response.status_code == 303
        yield client


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, "the page has no CSRF field"
    return found.group(1)


def text_of(page: httpx.Response) -> str:
    """The page's words as a reader sees them: no head, no tags, whitespace folded."""
    body = re.sub(r"(?s)<head>.*</head>", "", page.text)
    inline = re.sub(r"</?(a|b|code|span|strong)\b[^>]*>", "", body)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", inline)).split())
