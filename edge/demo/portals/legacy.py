"""The old Parent Portal: classes, enrolment (in memory), account, settings, and a photo gallery
the new portal lacks (the demo's shadow parity finds it)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from edge.demo.portals import site
from edge.demo.portals.site import Markup, h, join

_LEGACY = site.Brand(
    portal="Parent Portal",
    style="--brand:#1f3a5f;--nav:#2d5282;--bg:#f4efe6;--radius:2px;--font:Georgia,serif",
    hints=("classes", "classes/101", "account", "settings", "gallery"),
)


def legacy_portal() -> Starlette:
    """The old Parent Portal: classes, enrolment (in memory), account, settings."""
    # (tenant, class id) → (visitor, child) for each place taken: places are everyone's,
    # names are their visitor's alone.
    enrolled: dict[tuple[str, str], list[tuple[str, str]]] = {}

    def page(
        request: Request, tenant: str, title: str, body: Markup, status: int = 200
    ) -> Response:
        nav = [(f"/{tenant}/", "Home"), (f"/{tenant}/classes", "Classes")]
        nav.append((f"/{tenant}/account", "My account"))
        if site.edge_mode(request) != "active":  # once active, settings live on the new portal
            nav.append((f"/{tenant}/settings", "Settings"))
        return site.layout(_LEGACY, request, tenant, title, body, nav=nav, status=status)

    def left(tenant: str, c: site.Class) -> int:
        return c.places - len(enrolled.get((tenant, c.id), []))

    def children(request: Request, tenant: str, c: site.Class) -> list[str]:
        visitor = request.state.visitor
        return [child for who, child in enrolled.get((tenant, c.id), []) if who == visitor]

    def class_list(tenant: str) -> Markup:
        row = '<li><a href="/{t}/classes/{id}">{name}</a> — {when}, {left} places left</li>'
        items = (
            h(row, t=tenant, id=c.id, name=c.name, when=c.when, left=left(tenant, c))
            for c in site.CLASSES.values()
        )
        return h('<ul class="card">{}</ul>', join(items))

    home, classes = site.listing_pages(
        page, class_list, "<p>Welcome, parents of {}! This term's classes:</p>", ("Home", "Classes")
    )

    async def detail(request: Request) -> Response:
        tenant, c = site.path_tenant(request), site.path_class(request)
        done = h('<p class="note">Enrolled — see you there!</p>')
        body = h(
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
        tenant, c = site.path_tenant(request), site.path_class(request)
        child = (await site.form(request)).get("child") or "A child"
        if left(tenant, c) <= 0:
            return page(request, tenant, c.name, h("<p>Sorry, this class is full.</p>"), 409)
        enrolled.setdefault((tenant, c.id), []).append((request.state.visitor, child))
        return RedirectResponse(f"/{tenant}/classes/{c.id}?enrolled=1", status_code=303)

    async def account(request: Request) -> Response:
        tenant = site.path_tenant(request)
        rows = (
            h("<li>{child} — {name}, {when}</li>", child=child, name=c.name, when=c.when)
            for c in site.CLASSES.values()
            for child in children(request, tenant, c)
        )
        items = join(rows) or h("<li>No enrolments yet.</li>")
        return page(request, tenant, "My account", h('<ul class="card">{}</ul>', items))

    async def settings(request: Request) -> Response:
        tenant = site.path_tenant(request)
        body = h(
            '<div class="card"><p>Email reminders: on</p><p>Text messages: off</p>'
            "<p>Parent Portal settings for {}.</p></div>",
            site.business(tenant),
        )
        return page(request, tenant, "Settings", body)

    async def gallery(request: Request) -> Response:
        tenant = site.path_tenant(request)
        body = h('<div class="card"><p>Photos of the term at {}.</p></div>', site.business(tenant))
        return page(request, tenant, "Photo gallery", body)

    return site.portal_app(
        _LEGACY,
        [
            *site.home_routes(home),
            Route("/{tenant}/classes", classes),
            Route("/{tenant}/classes/{id}", detail),
            Route("/{tenant}/classes/{id}/enroll", enroll, methods=["POST"]),
            Route("/{tenant}/account", account),
            Route("/{tenant}/settings", settings),
            Route("/{tenant}/gallery", gallery),
        ],
    )
