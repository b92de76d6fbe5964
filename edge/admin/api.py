"""The admin listener: health, readiness and the tenants API. Never on the public listener."""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.modes import ChangeRefused, ModeCache, ModeStore, StoreUnavailable
from edge.policy import Mode
from edge.tenants import is_tenant_id


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class AdminApi:
    def __init__(self, store: ModeStore, cache: ModeCache, token: str) -> None:
        self.store = store
        self.cache = cache
        self.token = token.encode()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/readyz", self.readyz),
                Route("/api/tenants", self.list_tenants),
                Route("/api/tenants/{tenant}", self.get_tenant, methods=["GET"]),
                Route("/api/tenants/{tenant}", self.put_tenant, methods=["PUT"]),
                Route("/api/tenants/{tenant}/history", self.history),
            ],
            exception_handlers={StoreUnavailable: self._store_unavailable},
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.cache.ready:
            return JSONResponse({"status": "ready"})
        return error(503, "the mode store has not been reached yet")

    async def list_tenants(self, request: Request) -> Response:
        wanted = request.query_params.get("mode")
        if wanted is not None and Mode.parse(wanted) is None:
            return error(400, f"mode must be one of legacy, setup, active; got {wanted!r}")
        stored = await self.store.modes()
        tenants = [
            _describe(tenant, raw)
            for tenant, raw in sorted(stored.items())
            if wanted is None or raw == wanted
        ]
        return JSONResponse({"tenants": tenants})

    async def get_tenant(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if not is_tenant_id(tenant):
            return error(400, f"{tenant!r} is not a tenant id", tenant=tenant)
        return JSONResponse(_describe(tenant, await self.store.get(tenant)))

    async def history(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if not is_tenant_id(tenant):
            return error(400, f"{tenant!r} is not a tenant id", tenant=tenant)
        entries = await self.store.history(tenant)
        return JSONResponse({"tenant": tenant, "history": [e.to_json() for e in entries]})

    async def put_tenant(self, request: Request) -> Response:
        if not self._authorized(request):
            return error(401, "a valid 'Authorization: Bearer <token>' is required")
        tenant = request.path_params["tenant"]
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, 'the body must be JSON: {"mode": "setup", "force": false}')
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        mode = Mode.parse(body.get("mode")) if isinstance(body.get("mode"), str) else None
        if mode is None:
            return error(400, "mode must be one of legacy, setup, active", tenant=tenant)
        force = body.get("force", False)
        actor = body.get("actor", "admin-api")
        if not isinstance(force, bool) or not isinstance(actor, str) or not actor:
            return error(400, "force must be a boolean and actor a non-empty string")
        try:
            change = await self.store.set_mode(tenant, mode, actor=actor, force=force, via="api")
        except ChangeRefused as exc:
            return error(409, str(exc), tenant=tenant)
        return JSONResponse({**_describe(tenant, change.mode.value), "change": change.to_json()})

    def _authorized(self, request: Request) -> bool:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        return (
            bool(self.token)
            and scheme.lower() == "bearer"
            and hmac.compare_digest(presented.strip().encode(), self.token)
        )

    async def _store_unavailable(self, request: Request, exc: Exception) -> Response:
        return error(503, "the mode store cannot be reached", detail=str(exc))


def _describe(tenant: str, raw: str | None) -> dict[str, Any]:
    mode = Mode.parse(raw)
    described: dict[str, Any] = {"tenant": tenant, "mode": mode.value if mode else "invalid"}
    if mode is None:
        described["stored"] = raw
    return described
