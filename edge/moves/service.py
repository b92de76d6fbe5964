"""Moving tenants: one move, a bulk move, a scheduled move, each checked, guarded and audited.

Every way in (the admin API, the dashboard, the CLI, the scheduler, an import) moves tenants
through ``Moves``; the store below only stores. A move is forward only unless forced (checked
again atomically by the store's compare-and-set), an unforced activation asks the activation
guard first (readiness), and each change is logged, audited and announced.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from edge.core.refusals import (
    FORCE_FIELD,
    ChangeRefused,
    NeedsForce,
    Relayed,
    UnknownSchedule,
    quoted,
)
from edge.core.tenants import TENANT_ID, Mode, is_forward_move, is_tenant_id
from edge.modes import Change, ModeStore, StoreUnavailable
from edge.modes.base import DEFAULT_MODE, Outcome, Schedule, backward_from

log = logging.getLogger("edge.modes")

# Moves a bulk move makes at once: a move to active may wait seconds on a readiness check.
BULK_CONCURRENCY = 16

# Now, as an aware datetime; tests pass a clock of their own.
Clock = Callable[[], datetime]
# Asked before a tenant is moved to active without force: raises ChangeRefused to refuse,
# else returns a note for the audit entry (edge.activation.readiness.ReadinessCheck.guard).
ActivationGuard = Callable[[str], Awaitable[str]]


def utc_now() -> datetime:
    return datetime.now(UTC)


class MoveOutcome(StrEnum):
    MOVED = "moved"
    UNCHANGED = "unchanged"
    REFUSED = "refused"


@dataclass(frozen=True)
class MoveResult:
    """What a bulk move did (or in a dry run would do) to one tenant.

    The JSON form is the admin API's, so a refusal names force as the API's field.
    """

    tenant: str
    previous: str | None  # the raw stored value before
    mode: Mode
    outcome: MoveOutcome
    refusal: ChangeRefused | None = None  # why it was refused

    def to_json(self) -> dict[str, Any]:
        result = {
            "tenant": self.tenant,
            "from": self.previous,
            "to": self.mode.value,
            "result": self.outcome.value,
        }
        return {**result, "reason": self.refusal.says(FORCE_FIELD)} if self.refusal else result

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MoveResult:
        reason = data.get("reason")
        return cls(
            tenant=str(data["tenant"]),
            previous=None if data["from"] is None else str(data["from"]),
            mode=Mode(data["to"]),
            outcome=MoveOutcome(data["result"]),
            refusal=Relayed(reason) if reason else None,
        )


@dataclass(frozen=True)
class MoveProblem:
    """Why one move of a bulk request cannot be made; ``index`` is its place in the request."""

    index: int
    tenant: str
    refusal: ChangeRefused

    def to_json(self) -> dict[str, Any]:
        reason = self.refusal.says(FORCE_FIELD)
        return {"index": self.index, "tenant": self.tenant, "reason": reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MoveProblem:
        return cls(int(data["index"]), str(data["tenant"]), Relayed(str(data["reason"])))


class BulkRefused(ChangeRefused):
    """Some moves of a bulk request cannot be made, so none was made."""

    def __init__(self, problems: Sequence[MoveProblem], total: int) -> None:
        self.problems = sorted(problems, key=lambda problem: problem.index)
        self.total = total
        super().__init__(f"{len(self.problems)} of {total} moves cannot be made; nothing changed")


@dataclass(frozen=True)
class BulkMove:
    """Many (tenant, mode) moves, checked whole, then made one by one (``Moves.move_many``); a
    dry run only says what each would do."""

    moves: Sequence[tuple[str, str]]
    actor: str
    force: bool = False
    via: str = "bulk"
    dry_run: bool = False


def move_problem(tenant: str, mode: str) -> str | None:
    """Why (tenant, mode) can never be a move, or None when it is well formed."""
    if not is_tenant_id(tenant):
        return f"{quoted(tenant)} is not a tenant id ({TENANT_ID.pattern})"
    if Mode.parse(mode) is None:
        return f"{quoted(mode)} is not a mode (one of {', '.join(m.value for m in Mode)})"
    return None


def actor_problem(actor: str) -> str | None:
    """Why ``actor`` cannot name who moves a tenant, or None. CR, LF, NUL, ESC and kin (and
    Unicode's line separators and direction marks) would let a caller forge lines of the audit
    history, or of a terminal showing it."""
    if not actor.strip():
        return "an actor is needed: who makes the change"
    if not actor.isprintable():
        return f"{quoted(actor)} has a control character; give a name in plain text"
    return None


def checked_actor(actor: str) -> None:
    """ChangeRefused when ``actor`` cannot name who moves a tenant (actor_problem)."""
    if (problem := actor_problem(actor)) is not None:
        raise ChangeRefused(problem)


def checked_move(tenant: str, mode: Mode | str) -> Mode:
    """The target of a well-formed move; ChangeRefused says what is wrong with any other."""
    if (problem := move_problem(tenant, mode)) is not None:
        raise ChangeRefused(problem)
    return Mode(mode)


class Moves:
    """The one way tenants move. ``guard`` checks unforced activations; ``clock`` is now."""

    def __init__(
        self, store: ModeStore, *, guard: ActivationGuard | None = None, clock: Clock = utc_now
    ) -> None:
        self.store = store
        self.guard = guard
        self.clock = clock
        # Orders set_mode calls per tenant within this process, so that audit entries land
        # in the order of their swaps (and no two swaps share a timestamp).
        self._tenant_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def set_mode(
        self, tenant: str, mode: Mode | str, *, actor: str, force: bool = False, via: str = "cli"
    ) -> Change:
        """Move a tenant to ``mode``: forward only unless forced, audited and announced."""
        target = checked_move(tenant, mode)
        checked_actor(actor)
        note = ""
        if target is Mode.ACTIVE and self.guard is not None:
            note = "forced: readiness not checked" if force else await self.guard(tenant)
        lock = self._tenant_locks.get(tenant)
        if lock is None:
            lock = self._tenant_locks[tenant] = asyncio.Lock()
        async with lock:
            outcome, previous, at = await self.store.compare_and_set(tenant, target, force)
            if outcome is Outcome.REFUSED:
                raise NeedsForce(tenant, f"is {previous or DEFAULT_MODE.value}", target)
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
                await self.store.record(change)
        return change

    async def move_many(self, bulk: BulkMove) -> list[MoveResult]:
        """Move many (tenant, mode) pairs: checked whole, then made one by one.

        Every move is checked before any is made (a tenant id, a mode, each tenant once,
        forward unless forced); BulkRefused names every problem and nothing changes. A dry
        run stops there and says what each move would do. Then each goes through set_mode,
        which checks it again atomically and asks the activation guard: a move refused there
        (not ready, or moved by someone else meanwhile) is that tenant's REFUSED result, and
        the others are still made. Not all or nothing: a StoreUnavailable stops the moves not
        yet begun, and those made stay made.
        """
        checked_actor(bulk.actor)
        planned = await self._plan(bulk)
        if bulk.dry_run:
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
                        plan.tenant, plan.mode, actor=bulk.actor, force=bulk.force, via=bulk.via
                    )
                except ChangeRefused as exc:  # moved on by someone else since the check
                    results[index] = replace(plan, outcome=MoveOutcome.REFUSED, refusal=exc)
                except StoreUnavailable as exc:
                    failed.append(exc)
                else:
                    outcome = MoveOutcome.MOVED if change.changed else MoveOutcome.UNCHANGED
                    results[index] = MoveResult(plan.tenant, change.previous, change.mode, outcome)

        await asyncio.gather(*(mover() for _ in range(BULK_CONCURRENCY)))
        if failed:
            raise failed[0]
        return results

    async def _plan(self, bulk: BulkMove) -> list[MoveResult]:
        """What each move would do; BulkRefused when any cannot be made."""
        problems: list[MoveProblem] = []
        listed: set[str] = set()
        wellformed: list[tuple[int, str, Mode]] = []
        for index, (tenant, mode) in enumerate(bulk.moves):
            problem = move_problem(tenant, mode)
            if problem is None and tenant in listed:
                problem = f"{tenant} is listed more than once"
            listed.add(tenant)
            if problem is None:
                wellformed.append((index, tenant, Mode(mode)))
            else:
                problems.append(MoveProblem(index, tenant, ChangeRefused(problem)))
        stored = await self.store.get_many([tenant for _, tenant, _ in wellformed])
        planned: list[MoveResult] = []
        for (index, tenant, target), raw in zip(wellformed, stored, strict=True):
            current = Mode.parse(raw)
            if not bulk.force and not is_forward_move(current, target):
                problems.append(
                    MoveProblem(index, tenant, NeedsForce(tenant, f"is {current}", target))
                )
            outcome = MoveOutcome.UNCHANGED if current is target else MoveOutcome.MOVED
            planned.append(MoveResult(tenant, raw, target, outcome))
        if problems:
            raise BulkRefused(problems, len(bulk.moves))
        return planned

    async def schedule_move(
        self, tenant: str, mode: Mode | str, at: datetime, *, actor: str, force: bool = False
    ) -> Schedule:
        """Plan a move for the instant ``at``; a scheduler applies it through set_mode then.

        Refused when ``at`` is not in the future, or when the move would go backwards
        without force, judged against the mode the tenant will have by then (its current
        mode, or the target of its last schedule due before ``at``).
        """
        target = checked_move(tenant, mode)
        checked_actor(actor)
        if at.tzinfo is None:
            raise ChangeRefused(f"{at.isoformat()} needs a UTC offset, such as +01:00 or Z")
        now = self.clock()
        if at <= now:
            raise ChangeRefused(f"{at.isoformat()} is in the past (it is now {now.isoformat()})")
        earlier = [s for s in await self.store.schedules() if s.tenant == tenant and s.at <= at]
        if earlier:
            then: Mode | None = earlier[-1].mode
            state = f"will be {then} by then (schedule {earlier[-1].id})"
        else:
            then = Mode.parse(await self.store.get(tenant))
            state = f"is {then}" if then else "has an invalid stored mode"
        if then is target:
            raise ChangeRefused(f"{tenant} {state} already")
        if not force and not is_forward_move(then, target):
            raise NeedsForce(tenant, state, target)
        schedule = Schedule(
            id=secrets.token_hex(6),
            tenant=tenant,
            mode=target,
            at=at.astimezone(UTC),
            actor=actor,
            force=force,
            created=now,
        )
        await self.store.add_schedule(schedule)
        return schedule

    async def cancel_schedule(self, schedule_id: str) -> Schedule:
        """Remove a pending schedule; UnknownSchedule when none has that id."""
        for schedule in await self.store.schedules():
            if schedule.id == schedule_id and await self.store.finish_schedule(schedule):
                return schedule
        raise UnknownSchedule(f"no pending schedule has the id {quoted(schedule_id)}")
