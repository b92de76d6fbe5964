"""The dashboard: server-rendered pages on the admin listener to watch and move tenants.

Log in with the admin token; every page needs the session it gives, and every form that
changes something carries the session's CSRF token. With no token configured the pages are
read-only and need no login (the admin API's reads need none either). A move goes through
``Moves.set_mode`` like any other: forward-only unless forced, audited and published.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.templating import Jinja2Templates
from starlette.websockets import WebSocket

from edge.activation.insight import dashboard_insight
from edge.admin.api import error, http_error
from edge.admin.body import BodyLimit
from edge.admin.parts import AdminParts
from edge.admin.sessions import Session, Sessions
from edge.admin.wording import describe_move, sunset_distance, what_customers_see
from edge.config import Settings
from edge.core.asgi import ASGIApp
from edge.core.refusals import ChangeRefused, quoted
from edge.core.tenants import TENANT_ID, Mode, is_tenant_id
from edge.modes import StoreUnavailable
from edge.routing.decide import Policy
from edge.routing.preview import PreviewGate

PAGE_SIZE = 50
HISTORY_SHOWN = 50
# A count of tenants per mode reads every key: reuse it for a while (the page says when it
# was taken); a move made here drops it.
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")
SEARCH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
TEMPLATES = Path(__file__).with_name("templates")
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LoginNeeded(Exception):
    """The request has no valid session: send the browser to the login form."""


class PageError(Exception):
    """A request the dashboard refuses; the page says why and that nothing changed."""

    def __init__(self, status: int, title: str, message: str, back: str = "/") -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.back = status, title, message, back


class Dashboard:
    def __init__(
        self,
        settings: Settings,
        parts: AdminParts,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        policy: Policy,
        preview: PreviewGate | None,
    ) -> None:
        self.store, self.moves, self.counter = parts.store, parts.moves, parts.counter
        self.readiness, self.watch = parts.readiness, parts.watch
        self.preview = preview
        self.policy = policy
        self.prefix = settings.store.prefix
        self.sessions = Sessions(settings.admin.token) if settings.admin.token else None
        self.clock = clock
        env = Environment(
            loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined
        )
        env.filters["when"] = _when
        env.filters["mode_name"] = _mode_name
        self.templates = Jinja2Templates(env=env)

    def around(self, api: ASGIApp) -> Starlette:
        """The admin app: the dashboard's pages, and every other path to ``api`` (a trailing
        slash too, not redirected: the API answers it with its JSON 404); no WebSocket."""
        app = Starlette(
            routes=[
                Route("/", self.tenants, methods=["GET"]),
                Route("/login", self.login_form, methods=["GET"]),
                Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/tenants/{tenant}", self.tenant, methods=["GET"]),
                Route("/tenants/{tenant}/move", self.confirm, methods=["GET"]),
                Route("/tenants/{tenant}/move", self.move, methods=["POST"]),
                Route("/tenants/{tenant}/readiness", self.readiness_page, methods=["GET"]),
                WebSocketRoute("/{path:path}", _no_websocket),
                Mount("", app=api),
            ],
            exception_handlers={
                LoginNeeded: self._login_needed,
                PageError: self._page_error,
                StoreUnavailable: self._store_unavailable,
                # A form too large to read (edge.admin.body) or not a form: the admin error.
                HTTPException: http_error,
            },
            middleware=[Middleware(BodyLimit)],
        )
        app.router.redirect_slashes = False
        return app

    # Pages

    async def tenants(self, request: Request) -> Response:
        session = self._viewer(request)
        query = request.query_params
        search = query.get("q", "").strip().lower()
        mode = query.get("mode", "")
        cursor = query.get("cursor", "")
        problem = None
        if len(search) > 63 or not set(search) <= SEARCH_CHARS:
            problem = "Search by part of a tenant id: lowercase letters, digits and '-'."
        elif mode and Mode.parse(mode) is None:
            problem = "Pick a mode from the list."
        rows: list[tuple[str, Mode | None, str]] = []
        next_cursor = None
        if problem is None:
            try:
                page = await self.store.page(
                    cursor, contains=search, mode=mode or None, limit=PAGE_SIZE
                )
            except ValueError:
                problem = "That page link is out of date: start again from the first page."
            else:
                rows = [(t, Mode.parse(raw), raw) for t, raw in sorted(dict(page.tenants).items())]
                next_cursor = page.cursor
        shown = {tenant for tenant, _, _ in rows}
        context = {
            "search": search,
            "mode": mode,
            "problem": problem,
            "rows": rows,
            "first_page": not cursor,
            "next_url": (
                "/?" + urlencode({"q": search, "mode": mode, "cursor": next_cursor})
                if next_cursor
                else None
            ),
            "open_tenant": search if is_tenant_id(search) and search not in shown else None,
            "counts": await self.counter.count(),
            "sunset": self.policy.sunset,
            "sunset_distance": (
                sunset_distance(self.policy.sunset, self.clock()) if self.policy.sunset else None
            ),
        }
        return self._render(request, session, "tenants.html", context)

    async def tenant(self, request: Request) -> Response:
        session = self._viewer(request)
        tenant = self._tenant_of(request)
        raw = await self.store.get(tenant)
        mode = Mode.parse(raw)
        context = {
            "tenant": tenant,
            "mode": mode,
            "raw": raw,
            "key": f"{self.prefix}mode:{tenant}",
            "moved": request.query_params.get("moved") == "1",
            "sees": what_customers_see(tenant, mode, self.policy, self.clock()),
            "targets": [m for m in Mode if m is not mode],
            "rollback_to": {
                m
                for m in Mode
                if describe_move(tenant, mode, m, self.policy, self.clock()).rollback
            },
            "history": await self.store.history(tenant, limit=HISTORY_SHOWN),
            "legacy_home": self.policy.legacy_home_location(tenant),
            "new_home": self.policy.new_home_location(tenant),
            "preview_link": (
                self.preview.link(tenant, self.clock())
                if self.preview and mode is Mode.SETUP
                else None
            ),
            "check_readiness": self.readiness is not None and mode is not Mode.ACTIVE,
            "watch": (
                await self.watch.report(tenant) if self.watch and mode is Mode.ACTIVE else None
            ),
            "insight": await dashboard_insight(self.store, tenant, mode, self.clock().date()),
        }
        return self._render(request, session, "tenant.html", context)

    async def readiness_page(self, request: Request) -> Response:
        """Probes the new portal for the tenant's recorded deep links: takes a moment."""
        session = self._viewer(request)
        tenant = self._tenant_of(request)
        if self.readiness is None:
            raise PageError(404, "No readiness check", "This edge has no readiness check.")
        context = {"tenant": tenant, "report": await self.readiness.report(tenant)}
        return self._render(request, session, "readiness.html", context)

    async def confirm(self, request: Request) -> Response:
        session = self._changer(request)
        tenant = self._tenant_of(request)
        target = self._target(request.query_params.get("to", ""), tenant)
        current = Mode.parse(raw := await self.store.get(tenant))
        if current is target:
            raise PageError(
                409, "Nothing to change", f"{tenant} is already {target}.", f"/tenants/{tenant}"
            )
        now = self.clock()
        context = {
            "tenant": tenant,
            "current": current,
            "raw": raw,
            "target": target,
            "move": describe_move(tenant, current, target, self.policy, now),
            "sees": what_customers_see(tenant, target, self.policy, now),
            # An activation shows its readiness first: below the threshold it needs force.
            "report": (
                await self.readiness.report(tenant)
                if self.readiness and target is Mode.ACTIVE
                else None
            ),
        }
        return self._render(request, session, "confirm.html", context)

    async def move(self, request: Request) -> Response:
        tenant = self._tenant_of(request)
        back = f"/tenants/{tenant}"
        form = await request.form()
        session = self._changer(request, form, back)
        target = self._target(_field(form, "to"), tenant)
        seen = _field(form, "from")
        raw = await self.store.get(tenant)
        if seen != (raw or ""):
            raise PageError(
                409,
                "Changed meanwhile",
                f"{tenant} changed while you were confirming (it is now "
                f"{raw or Mode.LEGACY}). Nothing was changed: look again before moving it.",
                back,
            )
        try:
            await self.moves.set_mode(
                tenant,
                target,
                actor=f"dashboard:{session.who}",
                force=_field(form, "force") == "yes",
                via="dashboard",
            )
        except ChangeRefused as refused:
            raise PageError(
                409, "Change refused", f"{refused.says('force')}. Nothing was changed.", back
            ) from None
        self.counter.forget()
        return RedirectResponse(f"{back}?moved=1", status_code=303)

    # Logging in and out

    async def login_form(self, request: Request) -> Response:
        if self.sessions is None or self.sessions.read(request) is not None:
            return RedirectResponse("/", status_code=303)
        return self._login_page(request, _local(request.query_params.get("next", "")))

    async def login(self, request: Request) -> Response:
        if self.sessions is None:
            return RedirectResponse("/", status_code=303)
        form = await request.form()
        after = _local(_field(form, "next"))
        who = _field(form, "name").strip()
        if not self.sessions.is_token(_field(form, "token")):
            return self._login_page(request, after, who, "That is not the admin token.", 401)
        if not 0 < len(who) <= 64 or not set(who) <= NAME_CHARS:
            problem = "Give your name (letters, digits and . _ @ -): the audit log records it."
            return self._login_page(request, after, who, problem, 400)
        response = RedirectResponse(after, status_code=303)
        self.sessions.start(response, who, secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        self._changer(request, await request.form())
        response = RedirectResponse("/login", status_code=303)
        Sessions.end(response)
        return response

    # Helpers

    def _viewer(self, request: Request) -> Session | None:
        """Who is looking; None when no token is configured (read-only, no login)."""
        if self.sessions is None:
            return None
        session = self.sessions.read(request)
        if session is None:
            raise LoginNeeded
        return session

    def _changer(self, request: Request, form: FormData | None = None, back: str = "/") -> Session:
        """The session of someone allowed to change things; with ``form``, its CSRF checked."""
        session = self._viewer(request)
        if session is None:
            raise PageError(
                403,
                "Read-only",
                "No admin token is configured ([admin].token or EDGE_ADMIN_TOKEN), "
                "so the dashboard allows no changes.",
            )
        if form is not None and not session.accepts(_field(form, "csrf")):
            raise PageError(
                403,
                "Form expired",
                "The form's security token is missing or out of date. Nothing was changed: "
                "reload the page and try again.",
                back,
            )
        return session

    def _tenant_of(self, request: Request) -> str:
        tenant: str = request.path_params["tenant"]
        if not is_tenant_id(tenant):
            raise PageError(
                404, "No such tenant", f"{quoted(tenant)} is not a tenant id ({TENANT_ID.pattern})."
            )
        return tenant

    def _target(self, value: str, tenant: str) -> Mode:
        target = Mode.parse(value) if value else None
        if target is None:
            problem = f"{quoted(value)} is not a mode."
            raise PageError(400, "Unknown mode", problem, f"/tenants/{tenant}")
        return target

    def _render(
        self,
        request: Request,
        session: Session | None,
        template: str,
        context: dict[str, Any],
        status: int = 200,
    ) -> Response:
        common = {
            "session": session,
            "read_only": self.sessions is None,
            "now": self.clock(),
        }
        return self.templates.TemplateResponse(
            request, template, {**common, **context}, status_code=status, headers=PAGE_HEADERS
        )

    def _login_page(
        self, request: Request, after: str, who: str = "", problem: str = "", status: int = 200
    ) -> Response:
        context = {"next": after, "who": who, "problem": problem}
        return self._render(request, None, "login.html", context, status)

    async def _login_needed(self, request: Request, exc: Exception) -> Response:
        after = request.url.path if request.method == "GET" else "/"
        if request.url.query and request.method == "GET":
            after += "?" + request.url.query
        return RedirectResponse("/login?" + urlencode({"next": after}), status_code=303)

    async def _page_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)
        session = self.sessions.read(request) if self.sessions else None
        context = {"title": exc.title, "message": exc.message, "back": exc.back}
        return self._render(request, session, "message.html", context, exc.status)

    async def _store_unavailable(self, request: Request, exc: Exception) -> Response:
        session = self.sessions.read(request) if self.sessions else None
        context = {
            "title": "The mode store cannot be reached",
            "message": f"{exc}. Reload in a moment to see the current state.",
            "back": request.url.path,
        }
        return self._render(request, session, "message.html", context, 503)


async def _no_websocket(websocket: WebSocket) -> None:
    """The admin listener serves no WebSocket: a handshake gets the admin JSON error."""
    path = websocket.url.path
    await websocket.send_denial_response(error(404, f"there is no WebSocket at {path}", path=path))


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _local(path: str) -> str:
    """``path`` when it stays on this site, else the tenants page (no open redirect)."""
    if (
        path.startswith("/")
        and not path.startswith(("//", "/\\"))
        and path.isascii()
        and path.isprintable()
    ):
        return path
    return "/"


def _mode_name(raw: str | None) -> str:
    """A stored value as the dashboard names it: its mode, or "invalid"."""
    return Mode.parse(raw) or "invalid"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
