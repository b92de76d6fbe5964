"""The admin listener: health, readiness and the admin API. Never on the public listener.

Reads are open (the listener is on loopback by default); every change needs the bearer token
and is audited with its actor. Every error, Starlette's own 404 and 405 and every validation
error included, is JSON: ``{"error": "...", ...}``. ``AdminApi.endpoints`` is the table of
routes; the models in ``edge/admin/models.py`` validate them and ``edge/admin/openapi.py``
builds the document from both.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from edge.activation.insight import REPORTS
from edge.activation.readiness import NotReady
from edge.admin import insight_models as im
from edge.admin import models as m
from edge.admin.body import BodyRefused, parse_json
from edge.admin.models import PATH_PARAMS
from edge.admin.openapi import Endpoint, document
from edge.admin.parts import AdminParts
from edge.core.refusals import FORCE_FIELD, ChangeRefused, UnknownSchedule, quoted
from edge.core.tenants import Mode
from edge.modes import ModeCache, StoreUnavailable
from edge.moves.service import BulkMove, BulkRefused, MoveOutcome

if TYPE_CHECKING:
    from edge.observe.metrics import Metrics

DESCRIPTION = (
    "Tenant modes of the portal migration edge. Reads are open on the admin listener; changes "
    'need the bearer token and are audited. Every error is {"error": "...", ...}.'
)


class ApiError(Exception):
    """An answer other than success: its status, its message and any extra fields."""

    def __init__(
        self, status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.extra = extra


def error(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class AdminApi:
    def __init__(
        self, parts: AdminParts, cache: ModeCache, token: str, metrics: Metrics | None = None
    ) -> None:
        self.store, self.moves, self.counter = parts.store, parts.moves, parts.counter
        self.readiness, self.watch = parts.readiness, parts.watch
        self.cache = cache
        self.token = token.encode()
        self.metrics = metrics
        self.document = document(self.endpoints(), DESCRIPTION)

    def endpoints(self) -> list[Endpoint]:
        """Every route, with the models it reads and answers: the app and its document."""
        t, refused = "/api/tenants/{tenant}", (409, 503)
        # fmt: off
        rows = [
            Endpoint("GET", "/healthz", self.healthz, m.Status, ()),
            Endpoint("GET", "/readyz", self.readyz, m.Status),
            Endpoint("GET", "/metrics", self.scrape, None, (), media="text/plain")
            if self.metrics else None,
            Endpoint("GET", "/api/openapi.json", self.openapi, None, ()),
            Endpoint("GET", "/api/tenants", self.list_tenants, m.TenantPage, query=m.TenantsQuery),
            Endpoint("GET", "/api/tenants:counts", self.count_tenants, m.Counts),
            Endpoint("POST", "/api/tenants:bulk", self.bulk, m.BulkDone, refused,
                     body=m.BulkMoves, refusal=m.BulkRefused, auth=True),
            Endpoint("GET", t, self.get_tenant, m.Tenant),
            Endpoint("PUT", t, self.put_tenant, m.TenantChange, refused, body=m.SetMode,
                     refusal=m.TenantRefused, auth=True),
            Endpoint("GET", f"{t}/history", self.history, m.History, query=m.HistoryQuery),
            Endpoint("GET", f"{t}/readiness", self.ready, m.Readiness) if self.readiness else None,
            Endpoint("GET", f"{t}/watch", self.watched, m.Watch) if self.watch else None,
            Endpoint("GET", f"{t}/referrers", self.referrers, im.Referrers),
            Endpoint("GET", f"{t}/parity", self.parity, im.Parity),
            Endpoint("POST", f"{t}/schedule", self.schedule, m.Scheduled, refused, status=201,
                     body=m.ScheduleMove, refusal=m.TenantRefused, auth=True),
            Endpoint("GET", "/api/schedules", self.list_schedules, m.Schedules,
                     query=m.SchedulesQuery),
            Endpoint("DELETE", "/api/schedules/{id}", self.cancel_schedule, m.Cancelled,
                     (404, 503), auth=True),
        ]
        # fmt: on
        return [endpoint for endpoint in rows if endpoint]

    def app(self) -> Starlette:
        app = Starlette(
            routes=[Route(e.path, self._serve(e), methods=[e.method]) for e in self.endpoints()],
            exception_handlers={
                ApiError: self._api_error,
                HTTPException: http_error,
                StoreUnavailable: self._store_unavailable,
                Exception: self._internal_error,
            },
        )
        # Not a 307 to the path without its trailing slash: /api/tenants/ is no path of the
        # API, so it is the JSON 404 any unknown path gets.
        app.router.redirect_slashes = False
        return app

    def _serve(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        """The route's handler, given its validated inputs; its answer model dumped as JSON."""

        async def serve(request: Request) -> Response:
            if endpoint.auth:
                self._authorize(request)
            inputs = {
                name: _valid(PATH_PARAMS[name].validate_python, value, request.path_params, name)
                for name, value in request.path_params.items()
            }
            if endpoint.query:
                query = {key: value for key, value in request.query_params.items() if value}
                inputs["query"] = _valid(endpoint.query.model_validate, query, request.path_params)
            if endpoint.body:
                fields = await _json_object(request, endpoint.body)
                inputs["body"] = _valid(endpoint.body.model_validate, fields, request.path_params)
            answer = await endpoint.handler(request, **inputs)
            if isinstance(answer, Response):
                return answer
            assert isinstance(answer, endpoint.answer or ())
            content = answer.model_dump_json(by_alias=True, exclude_unset=True)
            return Response(content, endpoint.status, media_type="application/json")

        return serve

    # Health

    async def healthz(self, request: Request) -> m.Status:
        """The process is alive"""
        return m.Status(status="ok")

    async def readyz(self, request: Request) -> m.Status:
        """Ready to route: 503 until the mode store has been reached"""
        if self.cache.ready:
            return m.Status(status="ready")
        raise ApiError(503, "the mode store has not been reached yet")

    async def scrape(self, request: Request) -> Response:
        """Prometheus metrics (OpenMetrics when the Accept header asks for it)"""
        assert self.metrics is not None
        body, content_type = self.metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    async def openapi(self, request: Request) -> Response:
        """This document"""
        return JSONResponse(self.document)

    # Tenants

    async def list_tenants(self, request: Request, query: m.TenantsQuery) -> m.TenantPage:
        """One page of the tenants that have a mode set

        Tenants without a key are legacy and not listed. A page may hold fewer than limit
        tenants and still have a next one (each call does a bounded amount of work): follow
        next_cursor until it is null.
        """
        try:
            page = await self.store.page(
                query.cursor, contains=query.q, mode=query.mode, limit=query.limit
            )
        except ValueError as exc:
            raise ApiError(400, f"cursor: {exc}; start again without one") from None
        tenants = [_describe(tenant, raw) for tenant, raw in sorted(page.tenants)]
        return m.TenantPage.model_validate({"tenants": tenants, "next_cursor": page.cursor})

    async def count_tenants(self, request: Request) -> m.Counts:
        """How many tenants have each stored mode

        A count is one pass over every key (about a second per 100,000 tenants), so it is
        reused for up to 30 s, or until a change made through this instance; counted_at says
        when it was taken.
        """
        counted = await self.counter.count()
        return m.Counts.model_validate(
            {"counts": counted.counts, "total": counted.total, "counted_at": counted.at.isoformat()}
        )

    async def get_tenant(self, request: Request, tenant: str) -> m.Tenant:
        """A tenant's mode (legacy when it has no key)"""
        return m.Tenant.model_validate(_describe(tenant, await self.store.get(tenant)))

    async def history(self, request: Request, tenant: str, query: m.HistoryQuery) -> m.History:
        """A tenant's audited changes, newest first"""
        entries = await self.store.history(tenant, limit=query.limit)
        return m.History.model_validate(
            {"tenant": tenant, "history": [e.to_json() for e in entries]}
        )

    async def put_tenant(self, request: Request, tenant: str, body: m.SetMode) -> m.TenantChange:
        """Move a tenant: forward only unless force"""
        mode, force, actor = body.mode, body.force, body.actor
        try:
            change = await self.moves.set_mode(tenant, mode, actor=actor, force=force, via="api")
        except NotReady as exc:
            readiness = exc.report.to_json()
            raise ApiError(409, exc.says(FORCE_FIELD), tenant=tenant, readiness=readiness) from None
        except ChangeRefused as exc:
            raise ApiError(409, exc.says(FORCE_FIELD), tenant=tenant) from None
        self.counter.forget()
        described = _describe(tenant, change.mode.value)
        return m.TenantChange.model_validate({**described, "change": change.to_json()})

    async def ready(self, request: Request, tenant: str) -> m.Readiness:
        """Will the tenant's deep links resolve on the new portal?

        Maps each recorded legacy path through the path rules and probes the new portal for it
        (rate-limited), so it may take seconds. An unforced move to active is refused (409, with
        this report) while coverage is below [policy].activation_coverage.
        """
        assert self.readiness is not None
        report = await self.readiness.report(tenant)
        return m.Readiness.model_validate(report.to_json())

    async def watched(self, request: Request, tenant: str) -> m.Watch:
        """The watch after activation: 5xx and 404 shares against the preview's"""
        assert self.watch is not None
        return m.Watch.model_validate((await self.watch.report(tenant)).to_json())

    async def referrers(self, request: Request, tenant: str) -> im.Referrers:
        """The outside pages that still send customers to the legacy portal

        From the Referer of legacy-front requests, forwarded or redirected, of tenants with a
        routing key; query and fragment removed, the portals' own hosts left out, bounded per
        tenant (docs/activation.md).
        """
        return im.Referrers.model_validate(await REPORTS["referrers"].of(self.store, tenant))

    async def parity(self, request: Request, tenant: str) -> im.Parity:
        """How the new portal answered the legacy reads the shadow mirrored

        With [shadow] sample_rate above 0. An unforced move to active is refused (409) while a
        path blocks activation: legacy 2xx, new 404, 5xx or no answer (docs/activation.md).
        """
        return im.Parity.model_validate(await REPORTS["parity"].of(self.store, tenant))

    async def bulk(self, request: Request, body: m.BulkMoves) -> m.BulkDone:
        """Move many tenants: checked whole first, then made one by one

        Every move is checked first (tenant ids, modes, each tenant once, forward unless
        force): any problem refuses the whole request with 409 and a list of problems, and
        nothing changes; dry_run stops there. Then each move is made on its own, atomically
        and audited. An unforced activation the readiness or parity guard refuses, or a
        tenant moved past its target by someone else meanwhile, is that tenant's result
        "refused" with its reason while the other moves are made. A store outage stops the
        moves not yet made (503) and those made stay made: sending the request again is safe,
        they come out unchanged.
        """
        moves, force, actor, dry_run = body.pairs(), body.force, body.actor, body.dry_run
        try:
            results = await self.moves.move_many(
                BulkMove(moves, actor=actor, force=force, via="api", dry_run=dry_run)
            )
        except BulkRefused as exc:
            problems = [problem.to_json() for problem in exc.problems]
            raise ApiError(409, str(exc), problems=problems) from None
        if not dry_run:
            self.counter.forget()
        tally = Counter(result.outcome for result in results)
        return m.BulkDone.model_validate(
            {
                "dry_run": dry_run,
                "summary": {outcome.value: tally[outcome] for outcome in MoveOutcome},
                "results": [result.to_json() for result in results],
            }
        )

    # Schedules

    async def schedule(self, request: Request, tenant: str, body: m.ScheduleMove) -> m.Scheduled:
        """Schedule a move for a future instant

        Refused (409) when the instant is not in the future, or when the move goes backwards
        without force from the mode the tenant will have by then. When due, one edge instance
        makes it, checked again atomically.
        """
        mode, at, force, actor = body.mode, body.at, body.force, body.actor
        try:
            schedule = await self.moves.schedule_move(tenant, mode, at, actor=actor, force=force)
        except ChangeRefused as exc:
            raise ApiError(409, exc.says(FORCE_FIELD), tenant=tenant) from None
        return m.Scheduled.model_validate({"schedule": schedule.to_json()})

    async def list_schedules(self, request: Request, query: m.SchedulesQuery) -> m.Schedules:
        """The pending scheduled moves, soonest first"""
        tenant = query.tenant
        schedules = [
            s.to_json() for s in await self.store.schedules() if tenant in (None, s.tenant)
        ]
        return m.Schedules.model_validate({"schedules": schedules})

    async def cancel_schedule(self, request: Request, id: str) -> m.Cancelled:
        """Cancel a pending schedule"""
        try:
            schedule = await self.moves.cancel_schedule(id)
        except UnknownSchedule as exc:
            raise ApiError(404, str(exc)) from None
        return m.Cancelled.model_validate({"schedule": schedule.to_json(), "cancelled": True})

    # Errors

    def _authorize(self, request: Request) -> None:
        """Raises 401 unless the request carries the admin token (compared in constant time)."""
        if not self.token:
            raise ApiError(401, "no admin token is configured: set [admin].token")
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), self.token
        ):
            raise ApiError(
                401,
                "a valid 'Authorization: Bearer <token>' is required",
                headers={"WWW-Authenticate": 'Bearer realm="edge admin"'},
            )

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error(exc.status, exc.message, exc.headers, **exc.extra)

    async def _store_unavailable(self, request: Request, exc: Exception) -> Response:
        return error(503, "the mode store cannot be reached", {"Retry-After": "1"}, detail=str(exc))

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        return error(500, "internal error: see the edge log")


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (404, 405, a body too large, ...) in the admin's JSON shape."""
    assert isinstance(exc, HTTPException)
    path, method = request.url.path, request.method
    if exc.status_code == 404:
        return error(404, f"there is nothing at {path}", path=path)
    if exc.status_code == 405:
        allowed = _methods_at(request)
        return error(
            405,
            f"{method} is not allowed on {path}; use {', '.join(allowed)}",
            {"Allow": ", ".join(allowed)},
            path=path,
        )
    return error(exc.status_code, exc.detail, exc.headers)


# Reading a request: anything that does not fit is a 400 (ApiError) naming the field.


def _valid(
    validate: Callable[[Any], Any], value: Any, extra: Mapping[str, Any], name: str = ""
) -> Any:
    """``validate(value)``; a ValidationError is a 400 with every problem, each named by its
    field (or by ``name``, a parameter's)."""
    try:
        return validate(value)
    except ValidationError as exc:
        problems = (_problem(error, name) for error in exc.errors())
        raise ApiError(400, "; ".join(problems), **extra) from None


def _problem(error: ErrorDetails, name: str) -> str:
    """One problem as ``field: what is wrong; got VALUE``."""
    field = ".".join(str(part) for part in (name, *error["loc"]) if part != "")
    if error["type"] == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        message = error["msg"][:1].lower() + error["msg"][1:]
        if error["type"] == "extra_forbidden":
            message = "no such field"
        elif field and error["type"] != "missing":
            message += f"; got {quoted(error['input'])}"
    return f"{field}: {message}" if field else message


async def _json_object(request: Request, model: type[m.Body]) -> Any:
    example = json.dumps(model.example)
    try:
        body = parse_json(await request.body())
    except BodyRefused as exc:
        raise ApiError(400, str(exc)) from None
    except ValueError:
        raise ApiError(400, f"the body must be JSON, such as {example}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, such as {example}")
    return body


def _methods_at(request: Request) -> list[str]:
    """Every method some route serves at this request's path, for a 405's Allow header."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE and isinstance(route, Route) and route.methods:
            methods.update(route.methods)
    return sorted(methods)


def _describe(tenant: str, raw: str | None) -> dict[str, Any]:
    """A tenant as ``m.Tenant`` reads it (a dict: a page of a thousand validates 3x faster)."""
    mode = Mode.parse(raw)
    if mode is None:
        return {"tenant": tenant, "mode": "invalid", "stored": raw}
    return {"tenant": tenant, "mode": mode.value}
