"""The admin API from the outside, for the CLI when the store lives inside a running edge."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from edge.core.refusals import Relayed, UnknownSchedule
from edge.core.tenants import Mode
from edge.modes import Change, StoreUnavailable
from edge.modes.base import Schedule
from edge.moves.service import BulkMove, BulkRefused, MoveProblem, MoveResult

PAGE = 1000
# An activation probes the new portal for the tenant's deep links first: it may take a while.
PROBE_TIMEOUT = 600.0


class AdminClient:
    """Speaks the tenant reads of a ModeStore and the moves of the move service over a running
    edge's admin API; its refusals are worded as the API words them (Relayed)."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def get(self, tenant: str) -> str | None:
        body = await self._call("GET", f"/api/tenants/{tenant}")
        return body.get("stored", body["mode"])  # type: ignore[no-any-return]

    async def modes(self) -> dict[str, str]:
        found: dict[str, str] = {}
        params = {"limit": str(PAGE)}
        while True:
            body = await self._call("GET", "/api/tenants", params=params)
            found.update((t["tenant"], t.get("stored", t["mode"])) for t in body["tenants"])
            if body["next_cursor"] is None:
                return found
            params["cursor"] = body["next_cursor"]

    async def history(self, tenant: str, limit: int = 100) -> list[Change]:
        body = await self._call(
            "GET", f"/api/tenants/{tenant}/history", params={"limit": str(limit)}
        )
        return [Change.from_json(entry) for entry in body["history"]]

    async def set_mode(
        self, tenant: str, mode: Mode, *, actor: str, force: bool = False, via: str = "cli"
    ) -> Change:
        payload = {"mode": mode.value, "force": force, "actor": actor}
        body = await self._call(
            "PUT", f"/api/tenants/{tenant}", json=payload, timeout=PROBE_TIMEOUT
        )
        return Change.from_json(body["change"])

    async def move_many(self, bulk: BulkMove) -> list[MoveResult]:
        payload = {
            "moves": [{"tenant": tenant, "mode": mode} for tenant, mode in bulk.moves],
            "force": bulk.force,
            "actor": bulk.actor,
            "dry_run": bulk.dry_run,
        }
        body = await self._call("POST", "/api/tenants:bulk", json=payload)
        return [MoveResult.from_json(result) for result in body["results"]]

    async def schedule_move(
        self, tenant: str, mode: Mode, at: datetime, *, actor: str, force: bool = False
    ) -> Schedule:
        payload = {"mode": mode.value, "at": at.isoformat(), "force": force, "actor": actor}
        body = await self._call("POST", f"/api/tenants/{tenant}/schedule", json=payload)
        return Schedule.from_json(body["schedule"])

    async def schedules(self) -> list[Schedule]:
        body = await self._call("GET", "/api/schedules")
        return [Schedule.from_json(entry) for entry in body["schedules"]]

    async def cancel_schedule(self, schedule_id: str) -> Schedule:
        body = await self._call("DELETE", f"/api/schedules/{schedule_id}")
        return Schedule.from_json(body["schedule"])

    async def readiness(self, tenant: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/tenants/{tenant}/readiness", timeout=PROBE_TIMEOUT)

    async def watch(self, tenant: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/tenants/{tenant}/watch")

    async def insight(self, report: str, tenant: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/tenants/{tenant}/{report}")

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One request; its JSON error answers raised as the store would raise them."""
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StoreUnavailable(
                f"the admin API at {self.base_url} cannot be reached ({exc}); is edge running?"
            ) from None
        try:
            body: dict[str, Any] = response.json()
            message = str(body.get("error", "")) if response.is_error else ""
        except (ValueError, AttributeError):
            raise StoreUnavailable(
                f"{self.base_url} answered {response.status_code} without the admin API's "
                "JSON: is [admin].port right?"
            ) from None
        if response.status_code == 503:
            raise StoreUnavailable(message)
        if response.status_code == 404 and path.startswith("/api/schedules/"):
            raise UnknownSchedule(message)
        if response.status_code == 409 and "problems" in body:
            problems = [MoveProblem.from_json(problem) for problem in body["problems"]]
            raise BulkRefused(problems, len(kwargs["json"]["moves"]))
        if response.is_error:
            raise Relayed(message or f"the admin API answered {response.status_code}")
        return body
