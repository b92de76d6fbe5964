"""The admin listener: health, readiness and the admin API. Never on the public listener.

Reads are open (the listener is on loopback by default); every change needs the bearer token
and is audited with its actor. Every error, Starlette's own 404 and 405 included, is JSON:
``{"error": "...", ...}``. ``edge/admin/openapi.py`` describes each route.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route

from edge.activation.insight import REPORTS
from edge.activation.readiness import NotReady
from edge.admin.openapi import OPENAPI
from edge.core.tenants import TENANT_ID, Mode, is_tenant_id
from edge.modes import ChangeRefused, ModeCache, ModeStore, StoreUnavailable
from edge.modes.base import BulkRefused, MoveOutcome, UnknownSchedule
from edge.modes.counts import ModeCounter
from edge.moves.schedule import parse_instant

if TYPE_CHECKING:
    from edge.activation.readiness import ReadinessCheck
    from edge.activation.watch import WatchMonitor
    from edge.observe.metrics import Metrics

PAGE_LIMIT = 100
PAGE_LIMIT_MAX = 1000
HISTORY_LIMIT_MAX = 1000
ACTOR_MAX = 200
DEFAULT_ACTOR = "admin-api"


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
        self,
        store: ModeStore,
        cache: ModeCache,
        token: str,
        metrics: Metrics | None = None,
        *,
        readiness: ReadinessCheck | None = None,
        watch: WatchMonitor | None = None,
        counter: ModeCounter | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.token = token.encode()
        self.metrics = metrics
        self.counter = counter or ModeCounter(store)
        self.readiness = readiness
        self.watch = watch

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            *([Route("/metrics", self.scrape, methods=["GET"])] if self.metrics else []),
            Route("/api/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/tenants", self.list_tenants, methods=["GET"]),
            Route("/api/tenants:counts", self.count_tenants, methods=["GET"]),
            Route("/api/tenants:bulk", self.bulk, methods=["POST"]),
            Route("/api/tenants/{tenant}", self.get_tenant, methods=["GET"]),
            Route("/api/tenants/{tenant}", self.put_tenant, methods=["PUT"]),
            Route("/api/tenants/{tenant}/history", self.history, methods=["GET"]),
            *([Route("/api/tenants/{tenant}/readiness", self.ready)] if self.readiness else []),
            *([Route("/api/tenants/{tenant}/watch", self.watched)] if self.watch else []),
            Route("/api/tenants/{tenant}/schedule", self.schedule, methods=["POST"]),
            *(
                Route(f"/api/tenants/{{tenant}}/{name}", self.insight, methods=["GET"])
                for name in REPORTS
            ),
            Route("/api/schedules", self.list_schedules, methods=["GET"]),
            Route("/api/schedules/{id}", self.cancel_schedule, methods=["DELETE"]),
        ]

    def app(self) -> Starlette:
        return Starlette(
            routes=self.routes(),
            exception_handlers={
                ApiError: self._api_error,
                HTTPException: self._http_error,
                StoreUnavailable: self._store_unavailable,
                Exception: self._internal_error,
            },
        )

    # Health

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.cache.ready:
            return JSONResponse({"status": "ready"})
        return error(503, "the mode store has not been reached yet")

    async def scrape(self, request: Request) -> Response:
        assert self.metrics is not None
        body, content_type = self.metrics.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    # Tenants

    async def list_tenants(self, request: Request) -> Response:
        query = request.query_params
        mode = _mode_filter(query.get("mode"))
        contains = query.get("q", "").strip().lower()
        if contains and not _is_id_fragment(contains):
            raise ApiError(400, f"q: {contains!r} can never be part of a tenant id")
        limit = _int_param(query, "limit", PAGE_LIMIT, PAGE_LIMIT_MAX)
        try:
            page = await self.store.page(
                query.get("cursor", ""), contains=contains, mode=mode, limit=limit
            )
        except ValueError as exc:
            raise ApiError(400, f"cursor: {exc}; start again without one") from None
        tenants = [_describe(tenant, raw) for tenant, raw in sorted(page.tenants)]
        return JSONResponse({"tenants": tenants, "next_cursor": page.cursor})

    async def count_tenants(self, request: Request) -> Response:
        counted = await self.counter.count()
        return JSONResponse(
            {"counts": counted.counts, "total": counted.total, "counted_at": counted.at.isoformat()}
        )

    async def get_tenant(self, request: Request) -> Response:
        tenant = _tenant(request)
        return JSONResponse(_describe(tenant, await self.store.get(tenant)))

    async def history(self, request: Request) -> Response:
        tenant = _tenant(request)
        limit = _int_param(request.query_params, "limit", 100, HISTORY_LIMIT_MAX)
        entries = await self.store.history(tenant, limit=limit)
        return JSONResponse({"tenant": tenant, "history": [e.to_json() for e in entries]})

    async def put_tenant(self, request: Request) -> Response:
        self._authorize(request)
        tenant = _tenant(request)
        body = await _json_object(request, '{"mode": "setup", "force": false, "actor": "alice"}')
        mode = _mode_field(body)
        force, actor = _force_and_actor(body)
        try:
            change = await self.store.set_mode(tenant, mode, actor=actor, force=force, via="api")
        except NotReady as exc:
            raise ApiError(409, str(exc), tenant=tenant, readiness=exc.report.to_json()) from None
        except ChangeRefused as exc:
            raise ApiError(409, str(exc), tenant=tenant) from None
        self.counter.forget()
        return JSONResponse({**_describe(tenant, change.mode.value), "change": change.to_json()})

    async def ready(self, request: Request) -> Response:
        """Probes the new portal for the tenant's recorded deep links: may take seconds."""
        assert self.readiness is not None
        report = await self.readiness.report(_tenant(request))
        return JSONResponse(report.to_json())

    async def watched(self, request: Request) -> Response:
        assert self.watch is not None
        return JSONResponse((await self.watch.report(_tenant(request))).to_json())

    async def insight(self, request: Request) -> Response:
        """A transition insight report (edge.activation.insight): referrers or parity."""
        report = REPORTS[request.url.path.rpartition("/")[2]]
        return JSONResponse(await report.of(self.store, _tenant(request)))

    async def bulk(self, request: Request) -> Response:
        self._authorize(request)
        body = await _json_object(
            request, '{"tenants": ["acme-gym", "swim-school"], "mode": "active"}'
        )
        moves = _moves(body)
        force, actor = _force_and_actor(body)
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ApiError(400, "dry_run must be true or false")
        try:
            results = await self.store.move_many(
                moves, actor=actor, force=force, via="api", dry_run=dry_run
            )
        except BulkRefused as exc:
            problems = [problem.to_json() for problem in exc.problems]
            raise ApiError(409, str(exc), problems=problems) from None
        if not dry_run:
            self.counter.forget()
        tally = Counter(result.outcome for result in results)
        return JSONResponse(
            {
                "dry_run": dry_run,
                "summary": {outcome.value: tally[outcome] for outcome in MoveOutcome},
                "results": [result.to_json() for result in results],
            }
        )

    # Schedules

    async def schedule(self, request: Request) -> Response:
        self._authorize(request)
        tenant = _tenant(request)
        body = await _json_object(request, '{"mode": "active", "at": "2027-03-01T06:00:00Z"}')
        mode = _mode_field(body)
        at = _instant_field(body, "at")
        force, actor = _force_and_actor(body)
        try:
            schedule = await self.store.schedule_move(tenant, mode, at, actor=actor, force=force)
        except ChangeRefused as exc:
            raise ApiError(409, str(exc), tenant=tenant) from None
        return JSONResponse({"schedule": schedule.to_json()}, status_code=201)

    async def list_schedules(self, request: Request) -> Response:
        tenant = request.query_params.get("tenant")
        if tenant is not None and not is_tenant_id(tenant):
            raise ApiError(400, f"tenant: {tenant!r} is not a tenant id ({TENANT_ID.pattern})")
        schedules = [
            s.to_json() for s in await self.store.schedules() if tenant in (None, s.tenant)
        ]
        return JSONResponse({"schedules": schedules})

    async def cancel_schedule(self, request: Request) -> Response:
        self._authorize(request)
        try:
            schedule = await self.store.cancel_schedule(request.path_params["id"])
        except UnknownSchedule as exc:
            raise ApiError(404, str(exc)) from None
        return JSONResponse({"schedule": schedule.to_json(), "cancelled": True})

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

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (404, 405, ...) in the same JSON shape as ours."""
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

    async def _store_unavailable(self, request: Request, exc: Exception) -> Response:
        return error(503, "the mode store cannot be reached", {"Retry-After": "1"}, detail=str(exc))

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        return error(500, "internal error: see the edge log")


# Request parsing: each helper answers 400 (ApiError) with a message naming the field.


def _tenant(request: Request) -> str:
    tenant: str = request.path_params["tenant"]
    if not is_tenant_id(tenant):
        raise ApiError(400, f"{tenant!r} is not a tenant id ({TENANT_ID.pattern})", tenant=tenant)
    return tenant


def _is_id_fragment(text: str) -> bool:
    return len(text) <= 63 and all(c.isascii() and (c.isalnum() or c == "-") for c in text)


def _mode_filter(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if Mode.parse(value) is None:
        raise ApiError(400, f"mode: must be one of legacy, setup, active; got {value!r}")
    return value


def _int_param(query: Mapping[str, str], name: str, default: int, most: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise ApiError(400, f"{name}: must be a whole number from 1 to {most}; got {raw!r}")
    return int(raw)


async def _json_object(request: Request, example: str) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise ApiError(400, f"the body must be JSON, such as {example}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, such as {example}")
    return body


def _mode_field(body: Mapping[str, Any]) -> Mode:
    value = body.get("mode")
    mode = Mode.parse(value) if isinstance(value, str) else None
    if mode is None:
        raise ApiError(400, f"mode: must be one of legacy, setup, active; got {value!r}")
    return mode


def _force_and_actor(body: Mapping[str, Any]) -> tuple[bool, str]:
    force, actor = body.get("force", False), body.get("actor", DEFAULT_ACTOR)
    if not isinstance(force, bool):
        raise ApiError(400, f"force: must be true or false; got {force!r}")
    if not isinstance(actor, str) or not actor.strip() or len(actor) > ACTOR_MAX:
        raise ApiError(400, f"actor: must be a name of 1 to {ACTOR_MAX} characters")
    return force, actor.strip()


def _instant_field(body: Mapping[str, Any], name: str) -> datetime:
    value = body.get(name)
    try:
        return parse_instant(value if isinstance(value, str) else repr(value))
    except ValueError as exc:
        raise ApiError(400, f"{name}: {exc}") from None


def _moves(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``{"tenants": [...], "mode": ...}`` (many tenants to one mode) or ``{"moves": [...]}``."""
    if "moves" in body:
        if "tenants" in body or not isinstance(body["moves"], list):
            raise ApiError(400, 'give either "tenants" and "mode", or "moves": a list')
        pairs = []
        for move in body["moves"]:
            fields = move if isinstance(move, dict) else {}
            tenant, mode = fields.get("tenant"), fields.get("mode")
            if not isinstance(tenant, str) or not isinstance(mode, str):
                raise ApiError(400, 'moves: each must be {"tenant": "...", "mode": "..."}')
            pairs.append((tenant, mode))
        return pairs
    tenants = body.get("tenants")
    if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
        raise ApiError(400, "tenants: must be a list of tenant ids")
    mode = _mode_field(body)
    return [(tenant, mode.value) for tenant in tenants]


def _methods_at(request: Request) -> list[str]:
    """Every method some route serves at this request's path, for a 405's Allow header."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE and isinstance(route, Route) and route.methods:
            methods.update(route.methods)
    return sorted(methods)


def _describe(tenant: str, raw: str | None) -> dict[str, Any]:
    mode = Mode.parse(raw)
    described: dict[str, Any] = {"tenant": tenant, "mode": mode.value if mode else "invalid"}
    if mode is None:
        described["stored"] = raw
    return described
