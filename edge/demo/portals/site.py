"""What both demo portals are built of: visitors, the markup helper, the classes on offer,
the page layout, path and form reading, and the app around the routes.

Every value put into a page goes through ``h``, which escapes whatever is not already markup.
"""

from __future__ import annotations

import html
import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Generic, TypeVar
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request, cookie_parser
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The tenant-id rule of the spec; a real backend has its own copy, so this one does too.
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MAX_FORM_BYTES = 16 * 1024
Endpoint = Callable[[Request], Awaitable[Response]]
VISITOR_COOKIE = "demo-visitor"
VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{22}")
MAX_VISITORS = 10_000  # each portal forgets its least recent visitors past this many
T = TypeVar("T")


class Visitors:
    """ASGI middleware: gives each browser a visitor id in a cookie (``request.state.visitor``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cookies = cookie_parser(
            next((v.decode("latin-1") for k, v in scope["headers"] if k == b"cookie"), "")
        )
        visitor = cookies.get(VISITOR_COOKIE, "")
        fresh = VISITOR_ID.fullmatch(visitor) is None
        if fresh:
            visitor = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["visitor"] = visitor

        async def send_with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                cookie = f"{VISITOR_COOKIE}={visitor}; Path=/; HttpOnly; SameSite=Lax"
                message = {
                    **message,
                    "headers": [*message["headers"], (b"set-cookie", cookie.encode())],
                }
            await send(message)

        await self.app(scope, receive, send_with_cookie)


class PerVisitor(Generic[T]):
    """Each visitor's own value, for its least recent ``MAX_VISITORS`` visitors."""

    def __init__(self, new: Callable[[], T]) -> None:
        self._new = new
        self._values: OrderedDict[tuple[str, str], T] = OrderedDict()

    def __call__(self, request: Request, tenant: str) -> T:
        key = (str(request.state.visitor), tenant)
        value = self._values.get(key)
        if value is None:
            value = self._values[key] = self._new()
            if len(self._values) > MAX_VISITORS:
                self._values.popitem(last=False)
        self._values.move_to_end(key)
        return value


class Markup(str):
    """Text that is already HTML: `h` inserts it as it is."""

    __slots__ = ()


def h(template: str, /, *args: object, **kwargs: object) -> Markup:
    """`template.format(...)` with every argument escaped unless it is `Markup`."""

    def esc(value: object) -> object:
        return value if isinstance(value, Markup) else html.escape(str(value))

    return Markup(template.format(*map(esc, args), **{k: esc(v) for k, v in kwargs.items()}))


def join(parts: Iterable[Markup], sep: str = "") -> Markup:
    return Markup(sep.join(parts))


@dataclass(frozen=True, slots=True)
class Class:
    id: str
    name: str
    when: str
    coach: str
    places: int


CLASSES = {
    c.id: c
    for c in (
        Class("101", "Toddler Splash", "Mon 09:30", "Maya", 8),
        Class("102", "Junior Gymnastics", "Tue 16:00", "Theo", 12),
        Class("103", "Street Dance", "Wed 17:30", "Ines", 15),
        Class("104", "Stroke Clinic", "Sat 10:00", "Sam", 2),
    )
}


@dataclass(frozen=True, slots=True)
class Brand:
    portal: str  # "Parent Portal"
    style: str  # CSS custom properties: the palette that tells the portals apart
    hints: tuple[str, ...]  # paths below /{tenant}/ for the footer's "Try:" line


CSS = """
body{margin:0;font:16px/1.5 var(--font);background:var(--bg);color:#222}
header{background:var(--brand);color:#fff;padding:.8rem 1.5rem}
header h1{margin:0;font-size:1.4rem} header small{opacity:.85}
nav{background:var(--nav);padding:.4rem 1.5rem} nav a{color:#fff;margin-right:1rem}
main{max-width:48rem;margin:1.5rem auto;padding:0 1.5rem}
.card{background:#fff;border:1px solid #ddd;border-radius:var(--radius);padding:.8rem 1rem;
margin:.6rem 0} .banner{background:#ffd84d;color:#3a2e00;border-bottom:3px solid #c9a400;
padding:.7rem 1.5rem;font-weight:bold} .note{background:#e7f6e7;padding:.5rem 1rem}
button{background:var(--brand);color:#fff;border:0;border-radius:var(--radius);
padding:.4rem 1rem;cursor:pointer} code{background:#0001;padding:0 .2rem}
footer{max-width:48rem;margin:2rem auto;padding:0 1.5rem;color:#666;font-size:.85rem}
"""


def business(tenant: str) -> str:
    """'acme-gym' → 'Acme Gym'."""
    return " ".join(part.capitalize() for part in tenant.split("-") if part)


def edge_mode(request: Request) -> str:
    return request.headers.get("x-edge-mode", "")


def layout(
    brand: Brand,
    request: Request,
    tenant: str | None,
    title: str,
    body: Markup,
    *,
    nav: Sequence[tuple[str, str]] = (),
    banner: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """One page of either portal: its branding, what the router said, the body, a hint footer."""
    who = business(tenant) if tenant else "no tenant"
    seen = h(
        "{portal} · tenant <code>{tenant}</code> · X-Edge-Mode <code>{mode}</code>"
        " · X-Edge-Tenant <code>{hdr}</code>",
        portal=brand.portal,
        tenant=tenant or "(none)",
        mode=edge_mode(request) or "(none)",
        hdr=request.headers.get("x-edge-tenant", "(none)"),
    )
    links = join((h('<a href="{}">{}</a>', href, text) for href, text in nav))
    example = tenant or "acme-gym"
    hints = join(
        (h('<a href="/{t}/{p}">/{t}/{p}</a>', t=example, p=hint) for hint in brand.hints), " · "
    )
    document = h(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>{title} · {who} · {portal}</title><style>:root{{{style}}}{css}</style></head>"
        "<body>{banner}<header><h1>{who} — {portal}</h1><small>{seen}</small></header>"
        "{nav}<main><h2>{title}</h2>{body}</main>"
        "<footer>Try: {hints}</footer></body></html>",
        title=title,
        who=who,
        portal=brand.portal,
        style=Markup(brand.style),
        css=Markup(CSS),
        banner=h('<div class="banner" role="status">{}</div>', banner) if banner else "",
        seen=seen,
        nav=h("<nav>{}</nav>", links) if nav else "",
        body=body,
        hints=hints,
    )
    page_headers = {"Cache-Control": "no-store", **(headers or {})}
    return HTMLResponse(document, status_code=status, headers=page_headers)


def path_tenant(request: Request) -> str:
    tenant = str(request.path_params["tenant"])
    if TENANT_ID.match(tenant) is None:
        raise HTTPException(404)
    return tenant


def path_class(request: Request) -> Class:
    found = CLASSES.get(str(request.path_params["id"]))
    if found is None:
        raise HTTPException(404)
    return found


async def form(request: Request) -> dict[str, str]:
    """A small url-encoded form body (python-multipart is not a dependency here)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413)
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    return {key: values[0].strip()[:60] for key, values in fields.items()}


def portal_app(brand: Brand, routes: list[Route]) -> Starlette:
    """A portal app: `/healthz`, the routes, and small branded error pages."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        first = request.url.path.strip("/").split("/")[0]
        tenant = first if TENANT_ID.match(first) else None
        phrase = HTTPStatus(status).phrase
        body = h(
            "<p>{status} {phrase}: <code>{method} {path}</code></p>",
            status=status,
            phrase=phrase,
            method=request.method,
            path=request.url.path,
        )
        extra = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
        return layout(brand, request, tenant, phrase, body, status=status, headers=extra)

    app = Starlette(
        routes=[Route("/healthz", healthz), *routes],
        exception_handlers={HTTPException: error},
        middleware=[Middleware(Visitors)],
    )
    app.router.redirect_slashes = False  # its redirect would be built from the Host header
    return app


def home_routes(endpoint: Endpoint) -> list[Route]:
    """`/{tenant}` and `/{tenant}/` both serve the home page (no slash redirects)."""
    return [Route("/{tenant}", endpoint), Route("/{tenant}/", endpoint)]


def listing_pages(
    render: Callable[[Request, str, str, Markup], Response],
    listing: Callable[[str], Markup],
    intro: str,
    titles: tuple[str, str],
) -> tuple[Endpoint, Endpoint]:
    """A portal's home page (``intro`` for the tenant's business, then ``listing``) and the page
    of the listing alone, titled ``titles``."""
    home_title, listing_title = titles

    async def home(request: Request) -> Response:
        tenant = path_tenant(request)
        intro_text = h(intro, business(tenant))
        return render(request, tenant, home_title, join([intro_text, listing(tenant)]))

    async def listed(request: Request) -> Response:
        tenant = path_tenant(request)
        return render(request, tenant, listing_title, listing(tenant))

    return home, listed
