"""The router's own answers: redirects and short refusals, HTML for browsers, JSON on request."""

from __future__ import annotations

import html
import json
from email.utils import formatdate

from edge.asgi import Send

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;
color:#222}}h1{{font-size:1.4rem}}p{{color:#555}}</style></head>
<body><h1>{title}</h1><p>{message}</p></body></html>
"""
_TITLES = {
    400: "Bad request",
    403: "Not available yet",
    404: "Not found",
    410: "This portal has been retired",
    421: "Unknown site",
    500: "Something is misconfigured",
    502: "Bad gateway",
    503: "Temporarily unavailable",
    504: "Gateway timeout",
}


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
    headers: list[tuple[bytes, bytes]],
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
) -> int:
    """A short, clear answer that reached no backend."""
    if mode is not None:
        headers = [*headers, (b"x-edge-mode", mode.encode())]
    headers.append((b"cache-control", b"no-store"))
    if as_json:
        body = json.dumps({"error": message, "tenant": tenant, "mode": mode}).encode()
        content_type = b"application/json"
    else:
        title = _TITLES.get(status, "Not available")
        body = _PAGE.format(title=title, message=html.escape(message)).encode()
        content_type = b"text/html; charset=utf-8"
    return await send_response(send, status, body, content_type, headers, head_only)


async def send_redirect(
    send: Send,
    location: str,
    status: int,
    *,
    permanent: bool,
    headers: list[tuple[bytes, bytes]],
    head_only: bool = False,
) -> int:
    headers = [*headers, (b"location", location.encode("latin-1"))]
    if not permanent:
        headers.append((b"cache-control", b"no-store"))
    body = f'<!doctype html><a href="{html.escape(location)}">Moved</a>\n'.encode()
    return await send_response(send, status, body, b"text/html; charset=utf-8", headers, head_only)
