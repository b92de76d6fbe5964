"""The router's own answers: redirects and short refusals, HTML for browsers, JSON on request."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from email.utils import formatdate

from edge.core.asgi import Headers, Send
from edge.core.http import PERMANENT_REDIRECTS
from edge.core.tenants import Front

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;
color:#222}}h1{{font-size:1.4rem}}p{{color:#555}}a{{color:#1f5fbf}}</style></head>
<body><h1>{title}</h1><p>{message}</p>{link}</body></html>
"""
_LINK = '<p><a href="{href}">{text}</a></p>'
# Where a refused customer can go instead: the tenant's home on the portal that serves it.
_HOME_LINKS = {
    Front.LEGACY: "Continue on the Parent Portal",
    Front.NEW: "Go to the Customer Portal",
}
# edge's own answer when the portal gave none to pass on.
UPSTREAM_FAILURES = {
    502: "The portal could not be reached. Please try again in a moment.",
    503: "Too many uploads are in progress. Please try again shortly.",
    504: "The portal did not answer in time. Please try again in a moment.",
}
_TITLES = {
    400: "Bad request",
    403: "Not available yet",
    404: "Not found",
    408: "Request timeout",
    410: "This portal has been retired",
    414: "Address too long",
    421: "Unknown site",
    431: "Request headers too large",
    500: "Something is misconfigured",
    502: "Bad gateway",
    503: "Temporarily unavailable",
    504: "Gateway timeout",
}


def asks_for_json(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """The request's Accept header prefers JSON (read only for refusals: most requests are
    not refused)."""
    return wants_json(next((value for name, value in headers if name == b"accept"), b""))


def wants_json(accept: bytes) -> bool:
    """JSON when the client asks for it ahead of HTML (browsers list text/html first)."""
    json_at = accept.find(b"json")
    if json_at < 0:
        return False
    html_at = accept.find(b"text/html")
    return html_at < 0 or json_at < html_at


def http_date() -> bytes:
    return formatdate(usegmt=True).encode()


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Headers,
    head_only: bool = False,
) -> int:
    """Send a whole response; returns the body bytes sent."""
    headers = [
        *headers,
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"date", http_date()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else body})
    return 0 if head_only else len(body)


async def send_refusal(
    send: Send,
    status: int,
    message: str,
    *,
    tenant: str | None,
    mode: str | None,
    as_json: bool,
    headers: list[tuple[bytes, bytes]],
    head_only: bool = False,
    home: tuple[Front, str] | None = None,
) -> int:
    """A short, clear answer that reached no backend (see ``refusal``), with ``Cache-Control:
    no-store`` and ``X-Edge-Mode`` when the mode is known."""
    if mode is not None:
        headers = [*headers, (b"x-edge-mode", mode.encode())]
    headers.append((b"cache-control", b"no-store"))
    body, content_type = refusal(
        status, message, tenant=tenant, mode=mode, as_json=as_json, home=home
    )
    return await send_response(send, status, body, content_type, headers, head_only)


def refusal(
    status: int,
    message: str,
    *,
    tenant: str | None,
    mode: str | None,
    as_json: bool,
    home: tuple[Front, str] | None = None,
) -> tuple[bytes, bytes]:
    """The body and content type of a refusal: a page for a browser, with a link to ``home``
    (the portal and URL that serve this customer instead) when there is one; the JSON shape
    ``{"error", "tenant", "mode"}`` for a client that asks for JSON."""
    if as_json:
        body = json.dumps({"error": message, "tenant": tenant, "mode": mode}).encode()
        return body, b"application/json"
    link = ""
    if home is not None:
        front, href = home
        link = _LINK.format(href=html.escape(href), text=_HOME_LINKS[front])
    title = _TITLES.get(status, "Not available")
    body = _PAGE.format(title=title, message=html.escape(message), link=link).encode()
    return body, b"text/html; charset=utf-8"


async def send_redirect(
    send: Send, location: str, status: int, *, headers: Headers, head_only: bool = False
) -> int:
    headers = [*headers, (b"location", location.encode("latin-1"))]
    if status not in PERMANENT_REDIRECTS:
        headers.append((b"cache-control", b"no-store"))
    body = f'<!doctype html><a href="{html.escape(location)}">Moved</a>\n'.encode()
    return await send_response(send, status, body, b"text/html; charset=utf-8", headers, head_only)
