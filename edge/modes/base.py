"""The mode store contract, shared by the Redis store and the embedded memory store."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from edge.core.tenants import Mode, is_forward_move, is_tenant_id
from edge.modes.traffic import ParityCounts, TrafficCounts

log = logging.getLogger("edge.modes")

HISTORY_LIMIT = 1000
# What a missing key means.
DEFAULT_MODE = Mode.LEGACY

# Awaited once a subscription is in place; True when the store also reports every write to a
# mode key (KeysChanged), raw edits included.
OnSubscribed = Callable[[bool], Awaitable[None]]


class StoreUnavailable(Exception):
    """The store cannot be reached, or did not answer in time."""


class Outcome(IntEnum):
    """What the atomic compare-and-set did (the numbers are the Lua script's replies)."""

    SAME = 0
    CHANGED = 1
    REFUSED = 2


def _recorded_mode(value: str | None) -> Mode:
    """The mode of a stored record; ValueError when it is not one."""
    mode = Mode.parse(value)
    if mode is None:
        raise ValueError(f"{value!r} is not a mode")
    return mode


@dataclass(frozen=True)
class Change:
    """One mode change: what a move (edge.moves.service) returns and the audit log holds."""

    tenant: str
    previous: str | None
    mode: Mode
    actor: str
    at: datetime
    forced: bool
    via: str
    changed: bool = True
    note: str = ""  # what the activation guard found (readiness), for the audit

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "actor": self.actor,
            "at": self.at.isoformat(),
            "from": self.previous,
            "to": self.mode.value,
            "forced": self.forced,
            "via": self.via,
            "changed": self.changed,
            **({"note": self.note} if self.note else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        """An audit entry → Change; raises ValueError (or KeyError) on a malformed one."""
        return cls(
            tenant=str(data["tenant"]),
            previous=None if data["from"] is None else str(data["from"]),
            mode=_recorded_mode(data["to"]),
            actor=str(data["actor"]),
            at=datetime.fromisoformat(data["at"]),
            forced=bool(data["forced"]),
            via=str(data.get("via", "")),
            changed=bool(data.get("changed", True)),
            note=str(data.get("note", "")),
        )


@dataclass(frozen=True)
class Schedule:
    """A move to make at a set time, pending until a scheduler applies it."""

    id: str
    tenant: str
    mode: Mode
    at: datetime  # when it falls due
    actor: str
    force: bool
    created: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "mode": self.mode.value,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "force": self.force,
            "created": self.created.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Schedule:
        """Raises ValueError (or KeyError) on a malformed one."""
        return cls(
            id=str(data["id"]),
            tenant=str(data["tenant"]),
            mode=_recorded_mode(data["mode"]),
            at=datetime.fromisoformat(data["at"]),
            actor=str(data["actor"]),
            force=bool(data["force"]),
            created=datetime.fromisoformat(data["created"]),
        )

    def encode(self) -> str:
        """The stored form: the same schedule always encodes to the same string."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))


def decode_schedules(encoded: Sequence[str]) -> tuple[list[Schedule], list[str]]:
    """Stored schedules → (the schedules, soonest first; the entries that are not one)."""
    schedules, malformed = [], []
    for entry in encoded:
        try:
            schedules.append(Schedule.from_json(json.loads(entry)))
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a malformed schedule: %.200r", entry)
            malformed.append(entry)
    return sorted(schedules, key=lambda s: (s.at, s.created)), malformed


@dataclass(frozen=True)
class TenantPage:
    """One page of the tenants that have a key, and the cursor of the next page."""

    tenants: list[tuple[str, str]]  # (tenant, raw stored value)
    cursor: str | None  # None: there is no next page


@dataclass(frozen=True)
class ModeEvent:
    """A change announced to every instance; ``mode`` None means the value was not a mode."""

    tenant: str
    mode: Mode | None


@dataclass(frozen=True)
class KeysChanged:
    """The store's word that these tenants' mode keys were written, by anyone (edge, redis-cli,
    a script), without the values: Redis's invalidation messages. ``tenants`` None: any key may
    have changed (the database was flushed)."""

    tenants: tuple[str, ...] | None


StoreNotice = ModeEvent | KeysChanged


def encode_event(change: Change) -> str:
    return json.dumps(
        {
            "tenant": change.tenant,
            "mode": change.mode.value,
            "from": change.previous,
            "actor": change.actor,
            "at": change.at.isoformat(),
            "forced": change.forced,
        }
    )


def decode_event(payload: str) -> ModeEvent | None:
    """A published payload → ModeEvent, or None (logged) when it is not one of ours."""
    try:
        data = json.loads(payload)
        tenant, mode = data["tenant"], data["mode"]
    except (ValueError, TypeError, KeyError):
        log.warning("ignoring a malformed mode event: %.200r", payload)
        return None
    if not isinstance(tenant, str) or not is_tenant_id(tenant):
        log.warning("ignoring a mode event for a bad tenant id: %.200r", payload)
        return None
    return ModeEvent(tenant, Mode.parse(mode) if isinstance(mode, str) else None)


def decode_history(tenant: str, entries: Sequence[str]) -> list[Change]:
    changes = []
    for entry in entries:
        try:
            changes.append(Change.from_json(json.loads(entry)))
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a malformed history entry of %s: %.200r", tenant, entry)
    return changes


def backward_from(target: Mode) -> list[Mode]:
    """The modes from which moving to ``target`` goes backwards (and so needs force)."""
    return [mode for mode in Mode if not is_forward_move(mode, target)]


class ModeStore(ABC):
    """Where tenant modes live. Every method may raise StoreUnavailable."""

    @abstractmethod
    async def get(self, tenant: str) -> str | None:
        """The raw stored value, None when the tenant has no key."""

    @abstractmethod
    async def get_many(self, tenants: Sequence[str]) -> list[str | None]:
        """Raw values in the order of ``tenants``."""

    @abstractmethod
    async def history(self, tenant: str, limit: int = 100) -> list[Change]:
        """The audited changes of a tenant, newest first."""

    @abstractmethod
    async def modes(self) -> dict[str, str]:
        """Every tenant that has a key → its raw value."""

    @abstractmethod
    async def page(
        self, cursor: str = "", *, contains: str = "", mode: str | None = None, limit: int = 100
    ) -> TenantPage:
        """About ``limit`` tenants with a key, from ``cursor`` ("" for the first page) on.

        Only ids containing ``contains`` and, when given, stored values equal to ``mode``.
        The work per call is bounded, so a page may hold fewer (or a few more) than
        ``limit`` and still have a next one. Raises ValueError for a cursor it never gave.
        """

    @abstractmethod
    async def add_traffic(self, counts: TrafficCounts, keep: int) -> None:
        """Add one process's counts to the totals (edge.modes.traffic), in one round trip.

        Deep links are trimmed to the most requested ``keep * KEEP_SLACK`` per tenant.
        """

    @abstractmethod
    async def deep_links(self, tenant: str, limit: int) -> list[tuple[str, int]]:
        """The ``limit`` most requested legacy paths of a tenant and their counts, most first."""

    @abstractmethod
    async def responses(self, tenant: str) -> dict[str, dict[str, int]]:
        """A tenant's new-portal responses: phase (setup, active) → status class → count."""

    @abstractmethod
    async def referrers(self, tenant: str, limit: int) -> list[tuple[str, int, datetime]]:
        """The ``limit`` outside pages that sent most customers to the tenant's legacy portal:
        (page, requests, last seen), most first."""

    @abstractmethod
    async def legacy_hits(self, tenant: str, days: Sequence[str]) -> list[int]:
        """An active tenant's legacy-portal requests on each of ``days`` (ISO dates)."""

    @abstractmethod
    async def parity(self, tenant: str) -> ParityCounts:
        """The shadow's comparisons for a tenant, every process's added up."""

    @abstractmethod
    async def activations(self, since: datetime) -> dict[str, datetime]:
        """The tenants activated through edge at or after ``since`` (and not moved back since),
        each with the time of its activation."""

    @abstractmethod
    async def activated_at(self, tenant: str) -> datetime | None:
        """When the tenant was last activated through edge, None if it is not active since."""

    @abstractmethod
    def events(self, on_subscribed: OnSubscribed | None = None) -> AsyncIterator[StoreNotice]:
        """Live changes: the changes made through edge (ModeEvent) and, where the store tracks
        writes, every write to a mode key (KeysChanged). ``on_subscribed`` is awaited once
        the subscription is in place, before any notice is read.

        Raises StoreUnavailable when the subscription cannot be made or is lost; ends when
        the store is closed.
        """

    @abstractmethod
    async def ping(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def compare_and_set(
        self, tenant: str, target: Mode, force: bool
    ) -> tuple[Outcome, str | None, datetime]:
        """Atomically: refuse a backward move unless forced, else set.

        Returns the outcome, the raw previous value and the time of the swap.
        """

    @abstractmethod
    async def record(self, change: Change) -> None:
        """Append the audit entry and announce the change."""

    @abstractmethod
    async def schedules(self) -> list[Schedule]:
        """The pending scheduled moves, soonest first."""

    @abstractmethod
    async def claim_due(self, lease: float, limit: int = 100) -> list[Schedule]:
        """Up to ``limit`` due schedules, each handed to one caller only.

        A claimed schedule is due again after ``lease`` seconds unless finished by then, so
        a move whose claimant died is still made.
        """

    @abstractmethod
    async def finish_schedule(self, schedule: Schedule) -> bool:
        """Remove a schedule (applied or cancelled); False when it was not pending."""

    @abstractmethod
    async def add_schedule(self, schedule: Schedule) -> None:
        """Store a pending schedule, due at ``schedule.at``."""

    async def count_modes(self) -> dict[str, int]:
        """How many tenants have each stored value: legacy, setup, active and invalid.

        One pass over every key (a SCAN with Redis): tenants without a key, which are
        legacy, are not counted.
        """
        counts = dict.fromkeys([*(m.value for m in Mode), "invalid"], 0)
        for raw in (await self.modes()).values():
            counts[raw if raw in counts else "invalid"] += 1
        return counts
