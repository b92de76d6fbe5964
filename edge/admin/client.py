"""The admin API from the outside, for the CLI when the store lives inside a running edge."""

from __future__ import annotations

from typing import Any

import httpx

from edge.modes import Change, ChangeRefused, StoreUnavailable
from edge.policy import Mode


class AdminClient:
    """Speaks the tenant operations of a ModeStore over a running edge's admin API."""

    def __init__(self, base_url: str, token: str, timeout: float = 5.0) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def get(self, tenant: str) -> str | None:
        body = await self._call("GET", f"/api/tenants/{tenant}")
        return body.get("stored", body["mode"])  # type: ignore[no-any-return]

    async def modes(self) -> dict[str, str]:
        body = await self._call("GET", "/api/tenants")
        return {t["tenant"]: t.get("stored", t["mode"]) for t in body["tenants"]}

    async def history(self, tenant: str, limit: int = 100) -> list[Change]:
        body = await self._call("GET", f"/api/tenants/{tenant}/history")
        return [Change.from_json(entry) for entry in body["history"][:limit]]

    async def set_mode(
        self, tenant: str, mode: Mode, *, actor: str, force: bool = False, via: str = "cli"
    ) -> Change:
        payload = {"mode": mode.value, "force": force, "actor": actor}
        body = await self._call("PUT", f"/api/tenants/{tenant}", json=payload)
        return Change.from_json(body["change"])

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StoreUnavailable(
                f"the admin API at {self.base_url} cannot be reached ({exc}); is edge running?"
            ) from None
        body: dict[str, Any] = response.json()
        if response.status_code == 503:
            raise StoreUnavailable(body.get("error", "the mode store cannot be reached"))
        if response.is_error:
            raise ChangeRefused(body.get("error", f"the admin API answered {response.status_code}"))
        return body
