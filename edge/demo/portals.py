"""The two built-in demo portals that `edge demo` puts behind the router.

`legacy_portal()` is the old Parent Portal, `new_portal()` the new Customer Portal: two small,
self-contained Starlette apps with in-memory state, made so a person can click through a
tenant's transition and see at a glance which portal answered, for which tenant and in which
`X-Edge-Mode`. Tenants are the first path segment (`/acme-gym/...`).

They stand in for separate applications, so they share nothing with the router but the
`X-Edge-*` headers. Every value put into a page goes through `_h`, which escapes whatever is
not already markup. Each browser is a visitor of its own (a cookie): its basket, bookings and
enrolments are its own, and no visitor sees another's.
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
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["legacy_portal", "new_portal"]

# The tenant-id rule of the spec; a real backend has its own copy, so this one does too.
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MAX_FORM_BYTES = 16 * 1024
_Endpoint = Callable[[Request], Awaitable[Response]]
_VISITOR_COOKIE = "demo-visitor"
_VISITOR_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_MAX_VISITORS = 10_000  # each portal forgets its least recent visitors past this many
T = TypeVar("T")


class _Visitors:
    """ASGI middleware: gives each browser a visitor id in a cookie (``request.state.visitor``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cookies = cookie_parser(
            next((v.decode("latin-1") for k, v in scope["headers"] if k == b"cookie"), "")
        )
        visitor = cookies.get(_VISITOR_COOKIE, "")
        fresh = _VISITOR_ID.fullmatch(visitor) is None
        if fresh:
            visitor = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["visitor"] = visitor

        async def send_with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                cookie = f"{_VISITOR_COOKIE}={visitor}; Path=/; HttpOnly; SameSite=Lax"
                message = {
                    **message,
                    "headers": [*message["headers"], (b"set-cookie", cookie.encode())],
                }
            await send(message)

        await self.app(scope, receive, send_with_cookie)


class _PerVisitor(Generic[T]):
    """Each visitor's own value, for its least recent ``_MAX_VISITORS`` visitors."""

    def __init__(self, new: Callable[[], T]) -> None:
        self._new = new
        self._values: OrderedDict[tuple[str, str], T] = OrderedDict()

    def __call__(self, request: Request, tenant: str) -> T:
        key = (str(request.state.visitor), tenant)
        value = self._values.get(key)
        if value is None:
            value = self._values[key] = self._new()
            if len(self._values) > _MAX_VISITORS:
                self._values.popitem(last=False)
        self._values.move_to_end(key)
        return value


# ---------------------------------------------------------------- shared: markup and layout


class _Markup(str):
    """Text that is already HTML: `_h` inserts it as it is."""

    __slots__ = ()


def _h(template: str, /, *args: object, **kwargs: object) -> _Markup:
    """`template.format(...)` with every argument escaped unless it is `_Markup`."""

    def esc(value: object) -> object:
        return value if isinstance(value, _Markup) else html.escape(str(value))

    return _Markup(template.format(*map(esc, args), **{k: esc(v) for k, v in kwargs.items()}))


def _join(parts: Iterable[_Markup], sep: str = "") -> _Markup:
    return _Markup(sep.join(parts))


@dataclass(frozen=True, slots=True)
class _Class:
    id: str
    name: str
    when: str
    coach: str
    places: int


_CLASSES = {
    c.id: c
    for c in (
        _Class("101", "Toddler Splash", "Mon 09:30", "Maya", 8),
        _Class("102", "Junior Gymnastics", "Tue 16:00", "Theo", 12),
        _Class("103", "Street Dance", "Wed 17:30", "Ines", 15),
        _Class("104", "Stroke Clinic", "Sat 10:00", "Sam", 2),
    )
}


@dataclass(frozen=True, slots=True)
class _Brand:
    portal: str  # "Parent Portal"
    style: str  # CSS custom properties: the palette that tells the portals apart
    hints: tuple[str, ...]  # paths below /{tenant}/ for the footer's "Try:" line


_CSS = """
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


def _business(tenant: str) -> str:
    """'acme-gym' → 'Acme Gym'."""
    return " ".join(part.capitalize() for part in tenant.split("-") if part)


def _mode(request: Request) -> str:
    return request.headers.get("x-edge-mode", "")


def _page(
    brand: _Brand,
    request: Request,
    tenant: str | None,
    title: str,
    body: _Markup,
    *,
    nav: Sequence[tuple[str, str]] = (),
    banner: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """One page of either portal: its branding, what the router said, the body, a hint footer."""
    who = _business(tenant) if tenant else "no tenant"
    seen = _h(
        "{portal} · tenant <code>{tenant}</code> · X-Edge-Mode <code>{mode}</code>"
        " · X-Edge-Tenant <code>{hdr}</code>",
        portal=brand.portal,
        tenant=tenant or "(none)",
        mode=_mode(request) or "(none)",
        hdr=request.headers.get("x-edge-tenant", "(none)"),
    )
    links = _join((_h('<a href="{}">{}</a>', href, text) for href, text in nav))
    example = tenant or "acme-gym"
    hints = _join(
        (_h('<a href="/{t}/{p}">/{t}/{p}</a>', t=example, p=hint) for hint in brand.hints), " · "
    )
    document = _h(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>{title} · {who} · {portal}</title><style>:root{{{style}}}{css}</style></head>"
        "<body>{banner}<header><h1>{who} — {portal}</h1><small>{seen}</small></header>"
        "{nav}<main><h2>{title}</h2>{body}</main>"
        "<footer>Try: {hints}</footer></body></html>",
        title=title,
        who=who,
        portal=brand.portal,
        style=_Markup(brand.style),
        css=_Markup(_CSS),
        banner=_h('<div class="banner" role="status">{}</div>', banner) if banner else "",
        seen=seen,
        nav=_h("<nav>{}</nav>", links) if nav else "",
        body=body,
        hints=hints,
    )
    page_headers = {"Cache-Control": "no-store", **(headers or {})}
    return HTMLResponse(document, status_code=status, headers=page_headers)


def _tenant(request: Request) -> str:
    tenant = str(request.path_params["tenant"])
    if _TENANT_ID.match(tenant) is None:
        raise HTTPException(404)
    return tenant


def _class(request: Request) -> _Class:
    found = _CLASSES.get(str(request.path_params["id"]))
    if found is None:
        raise HTTPException(404)
    return found


async def _form(request: Request) -> dict[str, str]:
    """A small url-encoded form body (python-multipart is not a dependency here)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            raise HTTPException(413)
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    return {key: values[0].strip()[:60] for key, values in fields.items()}


def _app(brand: _Brand, routes: list[Route]) -> Starlette:
    """A portal app: `/healthz`, the routes, and small branded error pages."""

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        first = request.url.path.strip("/").split("/")[0]
        tenant = first if _TENANT_ID.match(first) else None
        phrase = HTTPStatus(status).phrase
        body = _h(
            "<p>{status} {phrase}: <code>{method} {path}</code></p>",
            status=status,
            phrase=phrase,
            method=request.method,
            path=request.url.path,
        )
        extra = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
        return _page(brand, request, tenant, phrase, body, status=status, headers=extra)

    app = Starlette(
        routes=[Route("/healthz", healthz), *routes],
        exception_handlers={HTTPException: error},
        middleware=[Middleware(_Visitors)],
    )
    app.router.redirect_slashes = False  # its redirect would be built from the Host header
    return app


def _home(endpoint: _Endpoint) -> list[Route]:
    """`/{tenant}` and `/{tenant}/` both serve the home page (no slash redirects)."""
    return [Route("/{tenant}", endpoint), Route("/{tenant}/", endpoint)]


# ---------------------------------------------------------------- the legacy Parent Portal

_LEGACY = _Brand(
    portal="Parent Portal",
    style="--brand:#1f3a5f;--nav:#2d5282;--bg:#f4efe6;--radius:2px;--font:Georgia,serif",
    hints=("classes", "classes/101", "account", "settings", "gallery"),
)


def legacy_portal() -> Starlette:
    """The old Parent Portal: classes, enrolment (in memory), account, settings, and a photo
    gallery the new portal lacks (the demo's shadow parity finds it)."""
    # (tenant, class id) → (visitor, child) for each place taken: places are everyone's,
    # names are their visitor's alone.
    enrolled: dict[tuple[str, str], list[tuple[str, str]]] = {}

    def page(
        request: Request, tenant: str, title: str, body: _Markup, status: int = 200
    ) -> Response:
        nav = [(f"/{tenant}/", "Home"), (f"/{tenant}/classes", "Classes")]
        nav.append((f"/{tenant}/account", "My account"))
        if _mode(request) != "active":  # once active, settings live on the new portal
            nav.append((f"/{tenant}/settings", "Settings"))
        return _page(_LEGACY, request, tenant, title, body, nav=nav, status=status)

    def left(tenant: str, c: _Class) -> int:
        return c.places - len(enrolled.get((tenant, c.id), []))

    def children(request: Request, tenant: str, c: _Class) -> list[str]:
        visitor = request.state.visitor
        return [child for who, child in enrolled.get((tenant, c.id), []) if who == visitor]

    def class_list(tenant: str) -> _Markup:
        row = '<li><a href="/{t}/classes/{id}">{name}</a> — {when}, {left} places left</li>'
        items = (
            _h(row, t=tenant, id=c.id, name=c.name, when=c.when, left=left(tenant, c))
            for c in _CLASSES.values()
        )
        return _h('<ul class="card">{}</ul>', _join(items))

    async def home(request: Request) -> Response:
        tenant = _tenant(request)
        intro = _h("<p>Welcome, parents of {}! This term's classes:</p>", _business(tenant))
        return page(request, tenant, "Home", _join([intro, class_list(tenant)]))

    async def classes(request: Request) -> Response:
        tenant = _tenant(request)
        return page(request, tenant, "Classes", class_list(tenant))

    async def detail(request: Request) -> Response:
        tenant, c = _tenant(request), _class(request)
        done = _h('<p class="note">Enrolled — see you there!</p>')
        body = _h(
            '{done}<div class="card"><p>{when} with coach {coach}: {left} of {places} places'
            " left.</p><p>Your children enrolled: {names}</p>"
            '<form method="post" action="/{t}/classes/{id}/enroll">'
            '<label>Child\'s name <input name="child" maxlength="60" required></label> '
            "<button>Enrol</button></form></div>",
            done=done if request.query_params.get("enrolled") else "",
            when=c.when,
            coach=c.coach,
            left=left(tenant, c),
            places=c.places,
            names=", ".join(children(request, tenant, c)) or "none yet",
            t=tenant,
            id=c.id,
        )
        return page(request, tenant, c.name, body)

    async def enroll(request: Request) -> Response:
        tenant, c = _tenant(request), _class(request)
        child = (await _form(request)).get("child") or "A child"
        if left(tenant, c) <= 0:
            return page(request, tenant, c.name, _h("<p>Sorry, this class is full.</p>"), 409)
        enrolled.setdefault((tenant, c.id), []).append((request.state.visitor, child))
        return RedirectResponse(f"/{tenant}/classes/{c.id}?enrolled=1", status_code=303)

    async def account(request: Request) -> Response:
        tenant = _tenant(request)
        rows = (
            _h("<li>{child} — {name}, {when}</li>", child=child, name=c.name, when=c.when)
            for c in _CLASSES.values()
            for child in children(request, tenant, c)
        )
        items = _join(rows) or _h("<li>No enrolments yet.</li>")
        return page(request, tenant, "My account", _h('<ul class="card">{}</ul>', items))

    async def settings(request: Request) -> Response:
        tenant = _tenant(request)
        body = _h(
            '<div class="card"><p>Email reminders: on</p><p>Text messages: off</p>'
            "<p>Parent Portal settings for {}.</p></div>",
            _business(tenant),
        )
        return page(request, tenant, "Settings", body)

    async def gallery(request: Request) -> Response:
        tenant = _tenant(request)
        body = _h('<div class="card"><p>Photos of the term at {}.</p></div>', _business(tenant))
        return page(request, tenant, "Photo gallery", body)

    return _app(
        _LEGACY,
        [
            *_home(home),
            Route("/{tenant}/classes", classes),
            Route("/{tenant}/classes/{id}", detail),
            Route("/{tenant}/classes/{id}/enroll", enroll, methods=["POST"]),
            Route("/{tenant}/account", account),
            Route("/{tenant}/settings", settings),
            Route("/{tenant}/gallery", gallery),
        ],
    )


# ---------------------------------------------------------------- the new Customer Portal

_NEW = _Brand(
    portal="Customer Portal",
    style="--brand:#6b2fd6;--nav:#0f9d8a;--bg:#f3f1ff;--radius:10px;"
    "--font:system-ui,-apple-system,'Segoe UI',sans-serif",
    hints=("schedule", "schedule/101", "checkout", "profile", "staff/login"),
)
_PREVIEW = "Preview — read-only: bookings and checkout are not possible yet"


def new_portal() -> Starlette:
    """The new Customer Portal: schedule, booking into a basket, checkout, profile, staff login."""
    basket = _PerVisitor[list[str]](list)  # class ids booked, not yet checked out
    confirmed = _PerVisitor[list[str]](list)  # class ids paid for

    def page(
        request: Request, tenant: str, title: str, body: _Markup, status: int = 200
    ) -> Response:
        nav = [(f"/{tenant}/", "Home"), (f"/{tenant}/schedule", "Schedule")]
        nav.append((f"/{tenant}/checkout", f"Basket ({len(basket(request, tenant))})"))
        nav.append((f"/{tenant}/profile", "My profile"))
        banner = _PREVIEW if _mode(request) == "setup" else ""
        return _page(_NEW, request, tenant, title, body, nav=nav, banner=banner, status=status)

    def refuse_in_preview(request: Request, tenant: str) -> Response | None:
        """Belt and braces: the router should have blocked this write before it got here."""
        if _mode(request) != "setup":
            return None
        body = _h("<p>Refused by the Customer Portal itself: in preview, edge should have "
                  "blocked this write before it reached the portal.</p>")  # fmt: skip
        return page(request, tenant, "Read-only preview", body, 403)

    def schedule_list(tenant: str) -> _Markup:
        card = '<div class="card"><a href="/{t}/schedule/{id}">{name}</a> · {when} · {coach}</div>'
        return _join(
            _h(card, t=tenant, id=c.id, name=c.name, when=c.when, coach=c.coach)
            for c in _CLASSES.values()
        )

    async def home(request: Request) -> Response:
        tenant = _tenant(request)
        intro = _h("<p>Book your next session at {}.</p>", _business(tenant))
        return page(request, tenant, "Welcome", _join([intro, schedule_list(tenant)]))

    async def schedule(request: Request) -> Response:
        tenant = _tenant(request)
        return page(request, tenant, "Schedule", schedule_list(tenant))

    async def session(request: Request) -> Response:
        tenant, c = _tenant(request), _class(request)
        body = _h(
            '<div class="card"><p>{when} with {coach} · {places} places</p>'
            '<form method="post" action="/{t}/schedule/{id}/book"><button>Book</button></form>'
            "</div>",
            when=c.when, coach=c.coach, places=c.places, t=tenant, id=c.id,
        )  # fmt: skip
        return page(request, tenant, c.name, body)

    async def book(request: Request) -> Response:
        """Also the Parent Portal's enrolment form, which an active tenant's redirect (307,
        body kept) brings here as .../schedule/{id}/enroll."""
        tenant, c = _tenant(request), _class(request)
        await _form(request)
        refused = refuse_in_preview(request, tenant)
        if refused is not None:
            return refused
        basket(request, tenant).append(c.id)
        return RedirectResponse(f"/{tenant}/checkout", status_code=303)

    async def checkout(request: Request) -> Response:
        tenant = _tenant(request)
        items = _join(_h("<li>{}</li>", _CLASSES[i].name) for i in basket(request, tenant))
        done = confirmed(request, tenant)
        body = _h(
            '{done}<div class="card"><ul>{items}</ul><form method="post" action="/{t}/checkout">'
            "<button>Pay and confirm</button></form></div>",
            done=_h('<p class="note">Confirmed: {} booking(s).</p>', len(done)) if done else "",
            items=items or _h("<li>Your basket is empty.</li>"),
            t=tenant,
        )
        return page(request, tenant, "Checkout", body)

    async def pay(request: Request) -> Response:
        tenant = _tenant(request)
        await _form(request)
        refused = refuse_in_preview(request, tenant)
        if refused is not None:
            return refused
        paid = basket(request, tenant)
        confirmed(request, tenant).extend(paid)
        paid.clear()
        return RedirectResponse(f"/{tenant}/checkout", status_code=303)

    async def profile(request: Request) -> Response:
        """Where the Parent Portal's "My account" leads once the tenant is active."""
        tenant = _tenant(request)
        rows = _join(
            _h("<li>{name} — {when}, with {coach}</li>", name=c.name, when=c.when, coach=c.coach)
            for c in (_CLASSES[i] for i in confirmed(request, tenant))
        )
        body = _h('<ul class="card">{}</ul>', rows or _h("<li>No bookings yet.</li>"))
        return page(request, tenant, "My profile", body)

    async def staff_login(request: Request) -> Response:
        tenant = _tenant(request)
        body = _h(
            '<form method="post" action="/{}/staff/login" class="card">'
            '<p><label>Staff e-mail <input name="user" maxlength="60" required></label></p>'
            '<p><label>Password <input name="password" type="password"></label></p>'
            "<button>Sign in</button></form>",
            tenant,
        )
        return page(request, tenant, "Staff sign-in", body)

    async def staff_signed_in(request: Request) -> Response:
        tenant = _tenant(request)
        user = (await _form(request)).get("user") or "staff"
        body = _h('<p class="note">Signed in as {} (demo: no password check).</p>', user)
        return page(request, tenant, "Staff sign-in", body)

    return _app(
        _NEW,
        [
            *_home(home),
            Route("/{tenant}/schedule", schedule),
            Route("/{tenant}/schedule/{id}", session),
            Route("/{tenant}/schedule/{id}/book", book, methods=["POST"]),
            Route("/{tenant}/schedule/{id}/enroll", book, methods=["POST"]),
            Route("/{tenant}/checkout", checkout),
            Route("/{tenant}/checkout", pay, methods=["POST"]),
            Route("/{tenant}/profile", profile),
            Route("/{tenant}/staff/login", staff_login),
            Route("/{tenant}/staff/login", staff_signed_in, methods=["POST"]),
        ],
    )
