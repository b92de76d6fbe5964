"""The mode store contract, shared by the Redis store and the embedded memory store."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from edge.core.tenants import TENANT_ID, Mode, is_forward_move, is_tenant_id
from edge.modes.traffic import ParityCounts, TrafficCounts

log = logging.getLogger("edge.modes")

HISTORY_LIMIT = 1000
# Moves a bulk move makes at once: a move to active may wait seconds on a readiness check.
BULK_CONCURRENCY = 16
# What a missing key means.
DEFAULT_MODE = Mode.LEGACY

# Awaited once a subscription is in place; True when the store also reports every write to a
# mode key (KeysChanged), raw edits included.
OnSubscribed = Callable[[bool], Awaitable[None]]
# Asked before a tenant is moved to active without force: raises ChangeRefused to refuse,
# else returns a note for the audit entry (edge.activation.readiness.ReadinessCheck.guard).
ActivationGuard = Callable[[str], Awaitable[str]]


class StoreUnavailable(Exception):
    """The store cannot be reached, or did not answer in time."""


class ChangeRefused(Exception):
    """A mode change that is not allowed; the message says why."""


class UnknownSchedule(ChangeRefused):
    """No pending schedule has the given id."""


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
        mode = Mode.parse(data["mode"])
        if mode is None:
            raise ValueError(f"{data['mode']!r} is not a mode")
        return cls(
            id=str(data["id"]),
            tenant=str(data["tenant"]),
            mode=mode,
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


class MoveOutcome(StrEnum):
    MOVED = "moved"
    UNCHANGED = "unchanged"
    REFUSED = "refused"


@dataclass(frozen=True)
class MoveResult:
    """What a bulk move did (or in a dry run would do) to one tenant."""

    tenant: str
    previous: str | None  # the raw stored value before
    mode: Mode
    outcome: MoveOutcome
    reason: str = ""  # why it was refused

    def to_json(self) -> dict[str, Any]:
        result = {
            "tenant": self.tenant,
            "from": self.previous,
            "to": self.mode.value,
            "result": self.outcome.value,
        }
        return {**result, "reason": self.reason} if self.reason else result

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MoveResult:
        return cls(
            tenant=str(data["tenant"]),
            previous=None if data["from"] is None else str(data["from"]),
            mode=Mode(data["to"]),
            outcome=MoveOutcome(data["result"]),
            reason=str(data.get("reason", "")),
        )


@dataclass(frozen=True)
class MoveProblem:
    """Why one move of a bulk request cannot be made; ``index`` is its place in the request."""

    index: int
    tenant: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "tenant": self.tenant, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MoveProblem:
        return cls(int(data["index"]), str(data["tenant"]), str(data["reason"]))


class BulkRefused(ChangeRefused):
    """Some moves of a bulk request cannot be made, so none was made."""

    def __init__(self, problems: Sequence[MoveProblem], total: int) -> None:
        self.problems = sorted(problems, key=lambda problem: problem.index)
        self.total = total
        super().__init__(f"{len(self.problems)} of {total} moves cannot be made; nothing changed")


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


def move_problem(tenant: str, mode: str) -> str | None:
    """Why (tenant, mode) can never be a move, or None when it is well formed."""
    if not is_tenant_id(tenant):
        return f"{tenant!r} is not a tenant id ({TENANT_ID.pattern})"
    if Mode.parse(mode) is None:
        return f"{mode!r} is not a mode (one of {', '.join(m.value for m in Mode)})"
    return None


def checked_move(tenant: str, mode: Mode | str) -> Mode:
    """The target of a well-formed move; ChangeRefused says what is wrong with any other."""
    if (problem := move_problem(tenant, mode)) is not None:
        raise ChangeRefused(problem)
    return Mode(mode)


def backwards(tenant: str, current: str, target: Mode) -> str:
    return f"{tenant} is {current}; moving back to {target.value} needs --force"


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
    async def _compare_and_set(
        self, tenant: str, target: Mode, force: bool
    ) -> tuple[Outcome, str | None, datetime]:
        """Atomically: refuse a backward move unless forced, else set.

        Returns the outcome, the raw previous value and the time of the swap.
        """

    @abstractmethod
    async def _record(self, change: Change) -> None:
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
    async def _add_schedule(self, schedule: Schedule) -> None: ...

    async def set_mode(
        self, tenant: str, mode: Mode | str, *, actor: str, force: bool = False, via: str = "cli"
    ) -> Change:
        """Move a tenant to ``mode``: forward only unless forced, audited and announced."""
        target = checked_move(tenant, mode)
        note = ""
        if target is Mode.ACTIVE and self.activation_guard is not None:
            note = "forced: readiness not checked" if force else await self.activation_guard(tenant)
        lock = self._tenant_locks.get(tenant)
        if lock is None:
            lock = self._tenant_locks[tenant] = asyncio.Lock()
        async with lock:
            outcome, previous, at = await self._compare_and_set(tenant, target, force)
            if outcome is Outcome.REFUSED:
                raise ChangeRefused(backwards(tenant, previous or DEFAULT_MODE.value, target))
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
                # Logged here, by the one process that made it; the others apply its event.
                log.info("mode changed", extra=change.to_json())
                await self._record(change)
        return change

    async def move_many(
        self,
        moves: Sequence[tuple[str, str]],
        *,
        actor: str,
        force: bool = False,
        via: str = "bulk",
        dry_run: bool = False,
    ) -> list[MoveResult]:
        """Move many (tenant, mode) pairs, all or nothing.

        Every move is checked before any is made (a tenant id, a mode, each tenant once,
        forward unless forced); BulkRefused names every problem and nothing changes. Then
        each goes through set_mode, which checks it again atomically. A dry run stops
        before the first change and says what each move would do.
        """
        problems: list[MoveProblem] = []
        listed: set[str] = set()
        wellformed: list[tuple[int, str, Mode]] = []
        for index, (tenant, mode) in enumerate(moves):
            problem = move_problem(tenant, mode)
            if problem is None and tenant in listed:
                problem = f"{tenant} is listed more than once"
            listed.add(tenant)
            if problem is None:
                wellformed.append((index, tenant, Mode(mode)))
            else:
                problems.append(MoveProblem(index, tenant, problem))
        stored = await self.get_many([tenant for _, tenant, _ in wellformed])
        planned: list[MoveResult] = []
        for (index, tenant, target), raw in zip(wellformed, stored, strict=True):
            current = Mode.parse(raw)
            if not force and not is_forward_move(current, target):
                problems.append(MoveProblem(index, tenant, backwards(tenant, str(current), target)))
            outcome = MoveOutcome.UNCHANGED if current is target else MoveOutcome.MOVED
            planned.append(MoveResult(tenant, raw, target, outcome))
        if problems:
            raise BulkRefused(problems, len(moves))
        if dry_run:
            return planned
        results: list[MoveResult] = list(planned)
        todo = iter(enumerate(planned))
        failed: list[StoreUnavailable] = []

        async def mover() -> None:
            # Never cancelled halfway: after an outage each mover finishes its current move,
            # so that no move is made without its audit entry.
            for index, plan in todo:
                if failed:
                    return
                try:
                    change = await self.set_mode(
                        plan.tenant, plan.mode, actor=actor, force=force, via=via
                    )
                except ChangeRefused as exc:  # moved on by someone else since the check
                    results[index] = replace(plan, outcome=MoveOutcome.REFUSED, reason=str(exc))
                except StoreUnavailable as exc:
                    failed.append(exc)
                else:
                    outcome = MoveOutcome.MOVED if change.changed else MoveOutcome.UNCHANGED
                    results[index] = MoveResult(plan.tenant, change.previous, change.mode, outcome)

        await asyncio.gather(*(mover() for _ in range(BULK_CONCURRENCY)))
        if failed:
            raise failed[0]
        return results

    async def schedule_move(
        self, tenant: str, mode: Mode | str, at: datetime, *, actor: str, force: bool = False
    ) -> Schedule:
        """Plan a move for the instant ``at``; a scheduler applies it through set_mode then.

        Refused when ``at`` is not in the future, or when the move would go backwards
        without force, judged against the mode the tenant will have by then (its current
        mode, or the target of its last schedule due before ``at``).
        """
        target = checked_move(tenant, mode)
        if at.tzinfo is None:
            raise ChangeRefused(f"{at.isoformat()} needs a UTC offset, such as +01:00 or Z")
        now = datetime.now(UTC)
        if at <= now:
            raise ChangeRefused(f"{at.isoformat()} is in the past (it is now {now.isoformat()})")
        earlier = [s for s in await self.schedules() if s.tenant == tenant and s.at <= at]
        if earlier:
            then: Mode | None = earlier[-1].mode
            state = f"will be {then} by then (schedule {earlier[-1].id})"
        else:
            then = Mode.parse(await self.get(tenant))
            state = f"is {then}" if then else "has an invalid stored mode"
        if then is target:
            raise ChangeRefused(f"{tenant} {state} already")
        if not force and not is_forward_move(then, target):
            raise ChangeRefused(f"{tenant} {state}; moving back to {target} needs --force")
        schedule = Schedule(
            id=secrets.token_hex(6),
            tenant=tenant,
            mode=target,
            at=at.astimezone(UTC),
            actor=actor,
            force=force,
            created=now,
        )
        await self._add_schedule(schedule)
        return schedule

    async def cancel_schedule(self, schedule_id: str) -> Schedule:
        """Remove a pending schedule; UnknownSchedule when none has that id."""
        for schedule in await self.schedules():
            if schedule.id == schedule_id and await self.finish_schedule(schedule):
                return schedule
        raise UnknownSchedule(f"no pending schedule has the id {schedule_id!r}")

    async def count_modes(self) -> dict[str, int]:
        """How many tenants have each stored value: legacy, setup, active and invalid.

        One pass over every key (a SCAN with Redis): tenants without a key, which are
        legacy, are not counted.
        """
        counts = dict.fromkeys([*(m.value for m in Mode), "invalid"], 0)
        for raw in (await self.modes()).values():
            counts[raw if raw in counts else "invalid"] += 1
        return counts
