"""The admin API's requests and answers as pydantic models.

Requests are validated with them and the OpenAPI document is built from their schemas, so a
tenant id's pattern, the modes and every limit are written once (most of them in
``edge.core.tenants``). Answers are dumped with ``exclude_unset``: a field left out when a model
is made (``stored``, ``note``, ``reason``) is left out of the JSON too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictBool,
    StrictStr,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from edge.activation.watch import KINDS
from edge.core.refusals import quoted
from edge.core.tenants import TENANT_ID, Mode, is_tenant_id
from edge.moves.schedule import parse_instant
from edge.moves.service import MoveOutcome, actor_problem

PAGE_LIMIT = 100
LIMIT_MAX = 1000
ACTOR_MAX = 200
DEFAULT_ACTOR = "admin-api"
TENANT_PATTERN = f"^{TENANT_ID.pattern}$"


def _tenant_id(value: str) -> str:
    if not is_tenant_id(value):
        raise ValueError(f"{quoted(value)} is not a tenant id ({TENANT_PATTERN})")
    return value


def _id_fragment(value: str) -> str:
    fragment = value.strip().lower()
    if len(fragment) > 63 or not all(c.isascii() and (c.isalnum() or c == "-") for c in fragment):
        raise ValueError(f"{quoted(value)} can never be part of a tenant id")
    return fragment


def _printable(value: str) -> str:
    if (problem := actor_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _instant(value: object) -> datetime:
    return parse_instant(value if isinstance(value, str) else repr(value))


TenantId = Annotated[
    StrictStr,
    AfterValidator(_tenant_id),
    WithJsonSchema({"type": "string", "pattern": TENANT_PATTERN}),
]
Instant = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Limit = Annotated[int, Field(ge=1, le=LIMIT_MAX)]
Actor = Annotated[
    StrictStr,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=ACTOR_MAX),
    AfterValidator(_printable),
    Field(description="who makes the change, for the audit log: printable, no line breaks"),
]
Force = Annotated[StrictBool, Field(description="move backwards too")]

# How each path parameter of a route template is read.
PATH_PARAMS: dict[str, TypeAdapter[Any]] = {"tenant": TypeAdapter(TenantId), "id": TypeAdapter(str)}


# Answers


class Error(BaseModel):
    """Every error: what is wrong, and any fields that say more."""

    model_config = ConfigDict(extra="allow")
    error: str


class Status(BaseModel):
    status: str


class Tenant(BaseModel):
    """A tenant's mode; legacy when it has no key."""

    tenant: str
    mode: Mode | Literal["invalid"]
    stored: str | None = Field(None, description="the stored value, when it is no mode")


class Change(BaseModel):
    """One audited change."""

    tenant: str
    actor: str
    at: Instant
    previous: str | None = Field(alias="from", description="the stored value before; null: no key")
    to: Mode
    forced: bool
    via: str = Field(description="cli, api, bulk, dashboard, schedule:ID")
    changed: bool
    note: str | None = Field(
        None, description="an activation's readiness: the coverage, or that it was forced"
    )


class TenantChange(Tenant):
    """The tenant after the move; change.changed is false when it was already there."""

    change: Change


class TenantPage(BaseModel):
    """A page of tenants: follow next_cursor until it is null."""

    tenants: list[Tenant]
    next_cursor: str | None


class Counts(BaseModel):
    """How many tenants have each stored mode (invalid: a value that is no mode)."""

    counts: dict[Mode | Literal["invalid"], int]
    total: int
    counted_at: Instant


class History(BaseModel):
    """A tenant's audited changes, newest first."""

    tenant: str
    history: list[Change]


class Schedule(BaseModel):
    id: str
    tenant: str
    mode: Mode
    at: Instant
    actor: str
    force: bool
    created: Instant


class Scheduled(BaseModel):
    """The schedule made."""

    schedule: Schedule


class Schedules(BaseModel):
    """The pending schedules, soonest first."""

    schedules: list[Schedule]


class Cancelled(BaseModel):
    """The schedule cancelled."""

    schedule: Schedule
    cancelled: bool


class MoveResult(BaseModel):
    tenant: str
    previous: str | None = Field(alias="from")
    to: Mode
    result: MoveOutcome
    reason: str | None = None


class BulkDone(BaseModel):
    """What was done to each tenant (or would be, in a dry run)."""

    dry_run: bool
    summary: dict[MoveOutcome, int]
    results: list[MoveResult]


class MoveProblem(BaseModel):
    index: int = Field(description="the move's place in the request")
    tenant: str
    reason: str


class BulkRefused(Error):
    """Some moves cannot be made, so none was."""

    problems: list[MoveProblem]


class PathCheck(BaseModel):
    path: str = Field(description="the legacy path")
    target: str = Field(description="where it lands")
    requests: int
    status: int | None
    error: str | None
    resolves: bool


class Readiness(BaseModel):
    """Will the tenant's deep links resolve on the new portal?"""

    tenant: str
    at: Instant
    requests: int = Field(description="recorded legacy requests")
    resolved: int = Field(description="of them, landing on a 2xx or 3xx")
    paths: int
    coverage: float | None = Field(description="resolved / requests; null: no recorded traffic")
    threshold: float
    ready: bool
    headline: str
    worst: list[PathCheck]


class TenantRefused(Error):
    """The move was refused: nothing changed."""

    tenant: str
    readiness: Readiness | None = Field(
        None, description="when an activation was refused because too few deep links resolve"
    )


class Watch(BaseModel):
    """5xx and 404 shares since activation against the setup preview's."""

    tenant: str
    activated_at: Instant | None
    ends: Instant | None
    watching: bool
    baseline: dict[str, int] = Field(description="the preview's responses by status class")
    after: dict[str, int] = Field(description="responses by status class since activation")
    shares: dict[str, dict[str, float | None]]
    threshold: float
    alerts: list[Literal[KINDS]]  # type: ignore[valid-type]
    summary: list[str]


# Requests


class Body(BaseModel):
    """A request body; its ``example`` is in the document and in the 400 for a body that is no
    JSON object. A field it does not have is refused: "forse": true must not move a tenant
    backwards unforced without a word."""

    model_config = ConfigDict(extra="forbid")
    example: ClassVar[dict[str, Any]] = {}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema["examples"] = [cls.example]
        return schema


class SetMode(Body):
    example = {"mode": "setup", "force": False, "actor": "alice"}

    mode: Mode
    force: Force = False
    actor: Actor = DEFAULT_ACTOR


class ScheduleMove(Body):
    example = {"mode": "active", "at": "2027-03-01T06:00:00Z"}

    mode: Mode
    at: Annotated[datetime, BeforeValidator(_instant), Field(description="with a UTC offset")]
    force: Force = False
    actor: Actor = DEFAULT_ACTOR


class Move(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: StrictStr
    mode: StrictStr = Field(description="checked with the other moves: a bad one is a problem")


class BulkMoves(Body):
    """Many tenants to one mode (tenants and mode), or moves of their own."""

    example = {"tenants": ["acme-gym", "swim-school"], "mode": "active"}

    tenants: list[StrictStr] | None = None
    mode: Mode | None = None
    moves: list[Move] | None = Field(None, description="instead of tenants and mode")
    force: Force = False
    dry_run: StrictBool = Field(False, description="check everything, change nothing")
    actor: Actor = DEFAULT_ACTOR

    @model_validator(mode="after")
    def _one_form(self) -> BulkMoves:
        if (self.moves is None) == (self.tenants is None):
            raise ValueError('give either "tenants" and "mode", or "moves"')
        if self.tenants is not None and self.mode is None:
            raise ValueError('mode: needed with "tenants"')
        return self

    def pairs(self) -> list[tuple[str, str]]:
        if self.moves is not None:
            return [(move.tenant, move.mode) for move in self.moves]
        assert self.tenants is not None and self.mode is not None
        return [(tenant, self.mode.value) for tenant in self.tenants]


class TenantsQuery(BaseModel):
    mode: Mode | None = Field(None, description="only tenants in this mode")
    q: Annotated[str, AfterValidator(_id_fragment)] = Field(
        "", description="only tenant ids containing this"
    )
    cursor: str = Field("", description="next_cursor of the previous page")
    limit: Limit = Field(PAGE_LIMIT, description="about this many tenants")


class HistoryQuery(BaseModel):
    limit: Limit = Field(100, description="at most this many")


class SchedulesQuery(BaseModel):
    tenant: TenantId | None = Field(None, description="only this tenant's")
