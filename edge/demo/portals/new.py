"""The new Customer Portal: schedule, booking into a basket, checkout, profile, staff login."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from edge.demo.portals import site
from edge.demo.portals.site import Markup, h, join

_NEW = site.Brand(
    portal="Customer Portal",
    style="--brand:#6b2fd6;--nav:#0f9d8a;--bg:#f3f1ff;--radius:10px;"
    "--font:system-ui,-apple-system,'Segoe UI',sans-serif",
    hints=("schedule", "schedule/101", "checkout", "profile", "staff/login"),
)
_PREVIEW = "Preview — read-only: bookings and checkout are not possible yet"


def new_portal() -> Starlette:
    """The new Customer Portal: schedule, booking into a basket, checkout, profile, staff login."""
    basket = site.PerVisitor[list[str]](list)  # class ids booked, not yet checked out
    confirmed = site.PerVisitor[list[str]](list)  # class ids paid for

    def page(
        request: Request, tenant: str, title: str, body: Markup, status: int = 200
    ) -> Response:
        nav = [(f"/{tenant}/", "Home"), (f"/{tenant}/schedule", "Schedule")]
        nav.append((f"/{tenant}/checkout", f"Basket ({len(basket(request, tenant))})"))
        nav.append((f"/{tenant}/profile", "My profile"))
        banner = _PREVIEW if site.edge_mode(request) == "setup" else ""
        return site.layout(
            _NEW, request, tenant, title, body, nav=nav, banner=banner, status=status
        )

    def refuse_in_preview(request: Request, tenant: str) -> Response | None:
        """Belt and braces: the router should have blocked this write before it got here."""
        if site.edge_mode(request) != "setup":
            return None
        body = h("<p>Refused by the Customer Portal itself: in preview, edge should have "
                  "blocked this write before it reached the portal.</p>")  # fmt: skip
        return page(request, tenant, "Read-only preview", body, 403)

    def schedule_list(tenant: str) -> Markup:
        card = '<div class="card"><a href="/{t}/schedule/{id}">{name}</a> · {when} · {coach}</div>'
        return join(
            h(card, t=tenant, id=c.id, name=c.name, when=c.when, coach=c.coach)
            for c in site.CLASSES.values()
        )

    home, schedule = site.listing_pages(
        page, schedule_list, "<p>Book your next session at {}.</p>", ("Welcome", "Schedule")
    )

    async def session(request: Request) -> Response:
        tenant, c = site.path_tenant(request), site.path_class(request)
        body = h(
            '<div class="card"><p>{when} with {coach} · {places} places</p>'
            '<form method="post" action="/{t}/schedule/{id}/book"><button>Book</button></form>'
            "</div>",
            when=c.when, coach=c.coach, places=c.places, t=tenant, id=c.id,
        )  # fmt: skip
        return page(request, tenant, c.name, body)

    async def book(request: Request) -> Response:
        """Also the Parent Portal's enrolment form, which an active tenant's redirect (307,
        body kept) brings here as .../schedule/{id}/enroll."""
        tenant, c = site.path_tenant(request), site.path_class(request)
        await site.form(request)
        refused = refuse_in_preview(request, tenant)
        if refused is not None:
            return refused
        basket(request, tenant).append(c.id)
        return RedirectResponse(f"/{tenant}/checkout", status_code=303)

    async def checkout(request: Request) -> Response:
        tenant = site.path_tenant(request)
        items = join(h("<li>{}</li>", site.CLASSES[i].name) for i in basket(request, tenant))
        done = confirmed(request, tenant)
        body = h(
            '{done}<div class="card"><ul>{items}</ul><form method="post" action="/{t}/checkout">'
            "<button>Pay and confirm</button></form></div>",
            done=h('<p class="note">Confirmed: {} booking(s).</p>', len(done)) if done else "",
            items=items or h("<li>Your basket is empty.</li>"),
            t=tenant,
        )
        return page(request, tenant, "Checkout", body)

    async def pay(request: Request) -> Response:
        tenant = site.path_tenant(request)
        await site.form(request)
        refused = refuse_in_preview(request, tenant)
        if refused is not None:
            return refused
        paid = basket(request, tenant)
        confirmed(request, tenant).extend(paid)
        paid.clear()
        return RedirectResponse(f"/{tenant}/checkout", status_code=303)

    async def profile(request: Request) -> Response:
        """Where the Parent Portal's "My account" leads once the tenant is active."""
        tenant = site.path_tenant(request)
        rows = join(
            h("<li>{name} — {when}, with {coach}</li>", name=c.name, when=c.when, coach=c.coach)
            for c in (site.CLASSES[i] for i in confirmed(request, tenant))
        )
        body = h('<ul class="card">{}</ul>', rows or h("<li>No bookings yet.</li>"))
        return page(request, tenant, "My profile", body)

    async def staff_login(request: Request) -> Response:
        tenant = site.path_tenant(request)
        body = h(
            '<form method="post" action="/{}/staff/login" class="card">'
            '<p><label>Staff e-mail <input name="user" maxlength="60" required></label></p>'
            '<p><label>Password <input name="password" type="password"></label></p>'
            "<button>Sign in</button></form>",
            tenant,
        )
        return page(request, tenant, "Staff sign-in", body)

    async def staff_signed_in(request: Request) -> Response:
        tenant = site.path_tenant(request)
        user = (await site.form(request)).get("user") or "staff"
        body = h('<p class="note">Signed in as {} (demo: no password check).</p>', user)
        return page(request, tenant, "Staff sign-in", body)

    return site.portal_app(
        _NEW,
        [
            *site.home_routes(home),
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
