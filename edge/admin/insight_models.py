"""The transition insight's answers (edge.activation.insight), as the admin API serves them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from edge.admin.models import Instant


class Referrer(BaseModel):
    referrer: str = Field(description="the outside page, without query or fragment")
    hits: int
    last_seen: Instant


class Referrers(BaseModel):
    """The outside pages that still send customers to the tenant's legacy portal."""

    tenant: str
    referrers: list[Referrer] = Field(description="most hits first")


class Disagreeing(BaseModel):
    path: str = Field(description="the legacy path")
    new_path: str = Field(description="where it maps on the new portal")
    legacy_status: int
    new_status: int = Field(description="0: no answer (refused, timed out)")
    hits: int
    blocks_activation: bool = Field(description="legacy 2xx, new 404, 5xx or no answer")


class Parity(BaseModel):
    """How the new portal answered the legacy reads the shadow mirrored."""

    tenant: str
    mirrored: int
    agreeing: int
    disagreeing: list[Disagreeing] = Field(description="most hits first")
    legacy_ms_p95: int | None = Field(description="upper bound of the p95's bucket, in ms")
    new_ms_p95: int | None = Field(description="upper bound of the p95's bucket, in ms")
