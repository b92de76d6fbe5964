"""The mode store contract, shared by the Redis store and the embedded memory store."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from edge.modes.traffic import TrafficCounts
from edge.policy import Mode, is_forward_move
from edge.tenants import TENANT_ID, is_tenant_id

log = logging.getLogger("edge.modes")

HISTORY_LIMIT = 1000
# What a missing key means.
DEFAULT_MODE = Mode.LEGACY

OnSubscribed = Callable[[], Awaitable[None]]
# Asked before a tenant is moved to active without force: raises ChangeRefused to refuse,
# else returns a note for the audit entry (edge.readiness.ReadinessCheck.guard).
ActivationGuard = Callable[[str], Awaitable[str]]


class StoreUnavailable(Exception):
    """The store cannot be reached, or did not answer in time."""


class ChangeRefused(Exception):
    """A mode change that is not allowed; the message says why."""


class Outcome(IntEnum):
    """What the atomic compare-and-set did (the numbers are the Lua script's replies)."""

    SAME = 0
    CHANGED = 1
    REFUSED = 2


@dataclass(frozen=True)
class Change:
    """One mode change: what ``set_mode`` returns and what the audit log holds."""

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
        mode = Mode.parse(data["to"])
        if mode is None:
            raise ValueError(f"{data['to']!r} is not a mode")
        return cls(
            tenant=str(data["tenant"]),
            previous=None if data["from"] is None else str(data["from"]),
            mode=mode,
            actor=str(data["actor"]),
            at=datetime.fromisoformat(data["at"]),
            forced=bool(data["forced"]),
            via=str(data.get("via", "")),
            changed=bool(data.get("changed", True)),
            note=str(data.get("note", "")),
        )


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

    def __init__(self) -> None:
        # Orders set_mode calls per tenant within this process, so that audit entries land
        # in the order of their swaps (and no two swaps share a timestamp).
        self._tenant_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self.activation_guard: ActivationGuard | None = None

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
    async def activations(self, since: datetime) -> dict[str, datetime]:
        """The tenants activated through edge at or after ``since`` (and not moved back since),
        each with the time of its activation."""

    @abstractmethod
    async def activated_at(self, tenant: str) -> datetime | None:
        """When the tenant was last activated through edge, None if it is not active since."""

    @abstractmethod
    def events(self, on_subscribed: OnSubscribed | None = None) -> AsyncIterator[ModeEvent]:
        """Live changes. ``on_subscribed`` is awaited once the subscription is in place.

        Raises StoreUnavailable when the subscription cannot be made or is lost; ends when
        the store is closed.
        """

    @abstractmethod
    async def ping(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _compare_and_set(
        self, tenant: str, target: Mode, force: bool
    ) -> tuple[Outcome, str | None, datetime]:
        """Atomically: refuse a backward move unless forced, else set.

        Returns the outcome, the raw previous value and the time of the swap.
        """

    @abstractmethod
    async def _record(self, change: Change) -> None:
        """Append the audit entry and announce the change."""

    async def set_mode(
        self, tenant: str, mode: Mode | str, *, actor: str, force: bool = False, via: str = "cli"
    ) -> Change:
        """Move a tenant to ``mode``: forward only unless forced, audited and announced."""
        if not is_tenant_id(tenant):
            raise ChangeRefused(f"{tenant!r} is not a tenant id ({TENANT_ID.pattern})")
        target = Mode.parse(mode) if isinstance(mode, str) else None
        if target is None:
            choices = ", ".join(m.value for m in Mode)
            raise ChangeRefused(f"{mode!r} is not a mode (one of {choices})")
        note = ""
        if target is Mode.ACTIVE and self.activation_guard is not None:
            note = "forced: readiness not checked" if force else await self.activation_guard(tenant)
        lock = self._tenant_locks.get(tenant)
        if lock is None:
            lock = self._tenant_locks[tenant] = asyncio.Lock()
        async with lock:
            outcome, previous, at = await self._compare_and_set(tenant, target, force)
            if outcome is Outcome.REFUSED:
                raise ChangeRefused(
                    f"{tenant} is {previous or DEFAULT_MODE.value}; "
                    f"moving back to {target.value} needs --force"
                )
            change = Change(
                tenant=tenant,
                previous=previous,
                mode=target,
                actor=actor,
                at=at,
                forced=Mode.parse(previous) in backward_from(target),
                via=via,
                changed=outcome is Outcome.CHANGED,
                note=note,
            )
            if change.changed:
                await self._record(change)
        return change
