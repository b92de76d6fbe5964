"""The scheduler: applies scheduled moves when they fall due, once across every instance.

Every instance (every worker) runs one. Each due schedule is claimed by exactly one of them
for a lease; the claimant moves the tenant through the move service, which checks it again
atomically, then removes the schedule. A claimant that dies leaves the schedule to be
claimed again once the lease runs out; the audit log tells whether it already made the move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from edge.core.background import Background
from edge.core.refusals import ChangeRefused, quoted
from edge.modes import Change, ModeStore, StoreUnavailable
from edge.modes.base import Schedule
from edge.moves.service import Moves

log = logging.getLogger("edge.schedule")

POLL_INTERVAL = 1.0
LEASE = 60.0
CLAIM_BATCH = 100


def parse_instant(text: str) -> datetime:
    """An ISO-8601 instant with a UTC offset, at the latest 9999-12-31T23:59:59Z (a schedule is
    kept in UTC); ValueError says what is wrong with anything else."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        at = None
    if at is None or at.utcoffset() is None:
        raise ValueError(
            f"{quoted(text)} is not an ISO-8601 instant with a UTC offset, "
            "such as 2027-03-01T06:00Z"
        )
    try:
        at.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{quoted(text)} is after 9999-12-31T23:59:59Z, the last instant"
        ) from None
    return at


def via(schedule: Schedule) -> str:
    """How an applied schedule appears in the audit log."""
    return f"schedule:{schedule.id}"


class Scheduler:
    def __init__(
        self,
        store: ModeStore,
        moves: Moves,
        *,
        interval: float = POLL_INTERVAL,
        lease: float = LEASE,
    ) -> None:
        self.store = store
        self.moves = moves
        self.interval = interval
        self.lease = lease
        self._background = Background("scheduler")
        self._failing = False

    async def run_due(self) -> list[Change]:
        """Claim and apply every schedule that is due now; the changes this call made."""
        applied: list[Change] = []
        while True:
            try:
                due = await self.store.claim_due(self.lease, CLAIM_BATCH)
            except StoreUnavailable as exc:
                if not self._failing:
                    log.warning("scheduled moves wait: the store cannot be reached: %s", exc)
                self._failing = True
                return applied
            self._failing = False
            for schedule in due:
                change = await self._apply(schedule)
                if change is not None:
                    applied.append(change)
            if len(due) < CLAIM_BATCH:
                return applied

    async def _apply(self, schedule: Schedule) -> Change | None:
        try:
            change = None if await self._already_made(schedule) else await self._move(schedule)
        except ChangeRefused as exc:
            log.warning("scheduled move %s refused, dropped: %s", schedule.id, exc)
            change = None
        except StoreUnavailable as exc:
            log.warning(
                "scheduled move %s of %s: the store failed (%s); it is retried in %.0f s",
                *(schedule.id, schedule.tenant, exc, self.lease),
            )
            return None
        # Left behind, it is claimed again after the lease, and then found in the audit log.
        with contextlib.suppress(StoreUnavailable):
            await self.store.finish_schedule(schedule)
        return change

    async def _move(self, schedule: Schedule) -> Change:
        change = await self.moves.set_mode(
            schedule.tenant,
            schedule.mode,
            actor=schedule.actor,
            force=schedule.force,
            via=via(schedule),
        )
        log.info(
            "scheduled move %s: %s %s %s, by %s",
            *(schedule.id, schedule.tenant, "→" if change.changed else "already", schedule.mode),
            schedule.actor,
        )
        return change

    async def _already_made(self, schedule: Schedule) -> bool:
        """True when an earlier claimant made this move but could not remove the schedule."""
        history = await self.store.history(schedule.tenant, limit=50)
        return any(change.via == via(schedule) for change in history)

    async def start(self) -> None:
        self._background.start(self._loop)

    async def stop(self) -> None:
        await self._background.stop()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_due()
            except Exception:
                log.exception("the scheduler failed; it goes on")
            await asyncio.sleep(self.interval)
