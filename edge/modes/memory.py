"""The embedded single-process store (``memory://``), for the demo and for tests."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

from edge.core.refusals import quoted
from edge.core.tenants import Mode, is_tenant_id
from edge.modes.base import (
    DEFAULT_MODE,
    HISTORY_LIMIT,
    Change,
    KeysChanged,
    ModeEvent,
    ModeStore,
    OnSubscribed,
    Outcome,
    Schedule,
    StoreNotice,
    TenantPage,
    backward_from,
)
from edge.modes.traffic import (
    DISAGREEMENTS_KEPT,
    KEEP_SLACK,
    REFERRERS_KEPT,
    RETENTION_SECONDS,
    ParityCounts,
    TrafficCounts,
)


class MemoryStore(ModeStore):
    def __init__(self) -> None:
        super().__init__()
        self._modes: dict[str, str] = {}
        self._history: dict[str, deque[Change]] = {}
        self._subscribers: set[asyncio.Queue[StoreNotice | None]] = set()
        self._deep_links: dict[str, dict[str, int]] = {}
        self._responses: dict[str, dict[str, dict[str, int]]] = {}  # tenant → phase → counts
        self._activated: dict[str, datetime] = {}
        self._referrers: dict[str, dict[str, tuple[int, datetime]]] = {}
        self._legacy_hits: dict[tuple[str, str], int] = {}  # (tenant, day) → requests
        self._parity: dict[str, ParityCounts] = {}
        # id → (when it is next due, the schedule); a claim pushes the first past its lease.
        self._schedules: dict[str, tuple[float, Schedule]] = {}

    async def get(self, tenant: str) -> str | None:
        return self._modes.get(tenant)

    async def get_many(self, tenants: Sequence[str]) -> list[str | None]:
        return [self._modes.get(tenant) for tenant in tenants]

    async def history(self, tenant: str, limit: int = 100) -> list[Change]:
        return list(self._history.get(tenant, ()))[: max(limit, 0)]

    async def page(
        self, cursor: str = "", *, contains: str = "", mode: str | None = None, limit: int = 100
    ) -> TenantPage:
        # The cursor is the last tenant of the previous page: pages come in tenant order.
        if cursor and not is_tenant_id(cursor):
            raise ValueError(f"{quoted(cursor)} is not a cursor of this store")
        matching = sorted(
            (tenant, value)
            for tenant, value in self._modes.items()
            if tenant > cursor and contains in tenant and (mode is None or value == mode)
        )
        tenants = matching[: max(limit, 1)]
        return TenantPage(tenants, tenants[-1][0] if len(matching) > len(tenants) else None)

    async def modes(self) -> dict[str, str]:
        return dict(self._modes)

    def set_raw(self, tenant: str, value: str | None) -> None:
        """What a raw ``redis-cli SET`` (or ``DEL`` for None) is to Redis: no audit, no event,
        only the write's invalidation."""
        if value is None:
            self._modes.pop(tenant, None)
        else:
            self._modes[tenant] = value
        self._announce(KeysChanged((tenant,)))

    def _announce(self, notice: StoreNotice) -> None:
        for queue in self._subscribers:
            queue.put_nowait(notice)

    async def events(self, on_subscribed: OnSubscribed | None = None) -> AsyncIterator[StoreNotice]:
        queue: asyncio.Queue[StoreNotice | None] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            if on_subscribed is not None:
                await on_subscribed(True)
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(queue)

    async def add_traffic(self, counts: TrafficCounts, keep: int) -> None:
        for tenant, paths in counts.deep_links.items():
            links = self._deep_links.setdefault(tenant, {})
            for path, count in paths.items():
                links[path] = links.get(path, 0) + count
            if len(links) > keep * KEEP_SLACK:
                # As Redis's ZREMRANGEBYRANK: the lowest counts go, ties by path.
                ranked = sorted(links.items(), key=lambda item: (item[1], item[0]))
                self._deep_links[tenant] = dict(ranked[-keep * KEEP_SLACK :])
        for tenant, phases in counts.responses.items():
            for phase, classes in phases.items():
                totals = self._responses.setdefault(tenant, {}).setdefault(phase, {})
                for status_class, count in classes.items():
                    totals[status_class] = totals.get(status_class, 0) + count

        self._add_insight(counts)

    def _add_insight(self, counts: TrafficCounts) -> None:
        for tenant, pages in counts.referrers.items():
            known = self._referrers.setdefault(tenant, {})
            for page, count in pages.items():
                known[page] = (known.get(page, (0, counts.at))[0] + count, counts.at)
            if len(known) > REFERRERS_KEPT * KEEP_SLACK:
                ranked = sorted(known.items(), key=lambda item: (item[1][0], item[0]))
                self._referrers[tenant] = dict(ranked[-REFERRERS_KEPT * KEEP_SLACK :])
        if counts.legacy_hits and all(day != counts.day for _, day in self._legacy_hits):
            # A new day: those past the retention go, as Redis's keys expire.
            oldest = (counts.at - timedelta(seconds=RETENTION_SECONDS)).date().isoformat()
            self._legacy_hits = {key: n for key, n in self._legacy_hits.items() if key[1] >= oldest}
        for tenant, count in counts.legacy_hits.items():
            key = (tenant, counts.day)
            self._legacy_hits[key] = self._legacy_hits.get(key, 0) + count
        for tenant, parity in counts.parity.items():
            totals = self._parity.setdefault(tenant, ParityCounts())
            totals.add(parity)
            if len(totals.disagreeing) > DISAGREEMENTS_KEPT * KEEP_SLACK:
                most = sorted(totals.disagreeing.items(), key=lambda item: (item[1], item[0]))
                totals.disagreeing = dict(most[-DISAGREEMENTS_KEPT * KEEP_SLACK :])

    async def referrers(self, tenant: str, limit: int) -> list[tuple[str, int, datetime]]:
        pages = self._referrers.get(tenant, {})
        ranked = sorted(pages.items(), key=lambda item: (item[1][0], item[0]), reverse=True)
        return [(page, count, at) for page, (count, at) in ranked[:limit]]

    async def legacy_hits(self, tenant: str, days: Sequence[str]) -> list[int]:
        return [self._legacy_hits.get((tenant, day), 0) for day in days]

    async def parity(self, tenant: str) -> ParityCounts:
        counts = ParityCounts()
        counts.add(self._parity.get(tenant, ParityCounts()))
        counts.disagreeing = dict(
            sorted(counts.disagreeing.items(), key=lambda item: (item[1], item[0]), reverse=True)[
                :DISAGREEMENTS_KEPT
            ]
        )
        return counts

    async def deep_links(self, tenant: str, limit: int) -> list[tuple[str, int]]:
        links = self._deep_links.get(tenant, {})
        return sorted(links.items(), key=lambda item: (item[1], item[0]), reverse=True)[:limit]

    async def responses(self, tenant: str) -> dict[str, dict[str, int]]:
        return {phase: dict(counts) for phase, counts in self._responses.get(tenant, {}).items()}

    async def activations(self, since: datetime) -> dict[str, datetime]:
        return {tenant: at for tenant, at in self._activated.items() if at >= since}

    async def activated_at(self, tenant: str) -> datetime | None:
        return self._activated.get(tenant)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        for queue in self._subscribers:
            queue.put_nowait(None)

    async def compare_and_set(
        self, tenant: str, target: Mode, force: bool
    ) -> tuple[Outcome, str | None, datetime]:
        # No await between the read and the write: atomic within the event loop.
        now = datetime.now(UTC)
        previous = self._modes.get(tenant)
        current = Mode.parse(previous) if previous is not None else DEFAULT_MODE
        if current is target:
            return Outcome.SAME, previous, now
        if not force and current in backward_from(target):
            return Outcome.REFUSED, previous, now
        self._modes[tenant] = target.value
        self._announce(KeysChanged((tenant,)))
        return Outcome.CHANGED, previous, now

    async def record(self, change: Change) -> None:
        self._history.setdefault(change.tenant, deque(maxlen=HISTORY_LIMIT)).appendleft(change)
        self._activated.pop(change.tenant, None)
        if change.mode is Mode.ACTIVE:  # a fresh watch
            self._activated[change.tenant] = change.at
            self._responses.get(change.tenant, {}).pop(Mode.ACTIVE.value, None)
        self._announce(ModeEvent(change.tenant, change.mode))

    async def schedules(self) -> list[Schedule]:
        return sorted((s for _, s in self._schedules.values()), key=lambda s: (s.at, s.created))

    async def claim_due(self, lease: float, limit: int = 100) -> list[Schedule]:
        now = datetime.now(UTC).timestamp()
        due = sorted(
            (entry for entry in self._schedules.values() if entry[0] <= now),
            key=lambda entry: entry[0],
        )[:limit]
        for _, schedule in due:
            self._schedules[schedule.id] = (now + lease, schedule)
        return [schedule for _, schedule in due]

    async def finish_schedule(self, schedule: Schedule) -> bool:
        return self._schedules.pop(schedule.id, None) is not None

    async def add_schedule(self, schedule: Schedule) -> None:
        self._schedules[schedule.id] = (schedule.at.timestamp(), schedule)
