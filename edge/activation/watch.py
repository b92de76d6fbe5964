"""The watch after the switch: did the 5xx or 404 share rise once a tenant went active?

For ``[policy].watch_window`` after an activation, the new portal's responses to the tenant
are counted by status class (activation.traffic) and compared with the setup-mode preview's,
the baseline. A share that rose by ``[policy].watch_rise`` or more, over at least MIN_RESPONSES
responses, is logged as a warning and counted in the ``edge_watch_alerts`` gauge, which an
alert can fire on. The watch never rolls a tenant back: that stays a decision for ops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.activation.traffic import Traffic
from edge.config import Settings
from edge.core.background import Background
from edge.core.tenants import Mode
from edge.modes import ModeStore, StoreUnavailable

log = logging.getLogger("edge.watch")

KINDS = ("5xx", "404")
MIN_RESPONSES = 50  # fewer responses after activation say nothing yet


def share(counts: Mapping[str, int], kind: str) -> float | None:
    total = sum(counts.values())
    return counts.get(kind, 0) / total if total else None


@dataclass(frozen=True)
class WatchReport:
    tenant: str
    activated_at: datetime | None  # None: not activated through edge, or moved back since
    window: timedelta
    at: datetime
    baseline: dict[str, int]  # the preview's responses by status class (setup mode)
    after: dict[str, int]  # the responses since activation
    threshold: float

    @property
    def ends(self) -> datetime | None:
        return None if self.activated_at is None else self.activated_at + self.window

    @property
    def watching(self) -> bool:
        return self.ends is not None and self.at < self.ends

    def rise(self, kind: str) -> float | None:
        """How far the share of ``kind`` rose over the baseline (none: counts as 0%)."""
        after = share(self.after, kind)
        if after is None or sum(self.after.values()) < MIN_RESPONSES:
            return None
        return after - (share(self.baseline, kind) or 0.0)

    @property
    def alerts(self) -> tuple[str, ...]:
        """The kinds whose share rose past the threshold."""
        return tuple(
            kind
            for kind in KINDS
            if (rise := self.rise(kind)) is not None and rise >= self.threshold
        )

    def summary(self) -> list[str]:
        if self.activated_at is None:
            return [f"{self.tenant}: not activated through edge, nothing to watch"]
        ends = self.activated_at + self.window
        state = "watching until" if self.watching else "window ended"
        lines = [
            f"{self.tenant}: activated {self.activated_at.isoformat()}, {state} {ends.isoformat()}"
        ]
        for kind in KINDS:
            before, after = share(self.baseline, kind), share(self.after, kind)
            lines.append(
                f"  {kind:>3}: {_percent(before)} in the preview ({sum(self.baseline.values())}"
                f" responses) → {_percent(after)} since ({sum(self.after.values())} responses)"
                + ("  ROSE" if kind in self.alerts else "")
            )
        if sum(self.after.values()) < MIN_RESPONSES:
            lines.append(f"  too few responses since activation to judge (< {MIN_RESPONSES})")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "activated_at": self.activated_at.isoformat() if self.activated_at else None,
            "ends": self.ends.isoformat() if self.ends else None,
            "watching": self.watching,
            "baseline": self.baseline,
            "after": self.after,
            "shares": {
                kind: {"baseline": share(self.baseline, kind), "after": share(self.after, kind)}
                for kind in KINDS
            },
            "threshold": self.threshold,
            "alerts": list(self.alerts),
            "summary": self.summary(),
        }


def _percent(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.1%}"


async def watch_report(
    store: ModeStore, tenant: str, settings: Settings, now: datetime | None = None
) -> WatchReport:
    activated_at = await store.activated_at(tenant)
    phases = await store.responses(tenant)
    return WatchReport(
        tenant=tenant,
        activated_at=activated_at,
        window=timedelta(seconds=settings.policy.watch_window),
        at=now or datetime.now(UTC),
        baseline=phases.get(Mode.SETUP.value, {}),
        after=phases.get(Mode.ACTIVE.value, {}),
        threshold=settings.policy.watch_rise,
    )


class WatchMonitor(Collector):
    """Checks the watched tenants every flush interval; a Prometheus collector of the result."""

    def __init__(
        self,
        store: ModeStore,
        traffic: Traffic,
        settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.traffic = traffic
        self.settings = settings
        self.clock = clock
        self.alerting: dict[str, tuple[str, ...]] = {}  # tenant → kinds that rose
        self._background = Background("watch")

    async def report(self, tenant: str) -> WatchReport:
        return await watch_report(self.store, tenant, self.settings, self.clock())

    async def check(self) -> None:
        alerting: dict[str, tuple[str, ...]] = {}
        for tenant in sorted(self.traffic.watched):
            try:
                report = await self.report(tenant)
            except StoreUnavailable:
                alerting = {**self.alerting, **alerting}  # keep what was known
                break
            if report.alerts:
                alerting[tenant] = report.alerts
                if self.alerting.get(tenant) != report.alerts:
                    log.warning(
                        "%s: the %s share rose after activation: %s",
                        tenant,
                        " and ".join(report.alerts),
                        "; ".join(line.strip() for line in report.summary()),
                    )
        self.alerting = alerting

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "edge_watch_tenants",
            "Active tenants inside their watch window after activation.",
            value=len(self.traffic.watched),
        )
        alerts = GaugeMetricFamily(
            "edge_watch_alerts",
            "Watched tenants whose 5xx or 404 share rose past [policy].watch_rise "
            "over the setup-mode preview's (the tenants are named in the log).",
            labels=("kind",),
        )
        for kind in KINDS:
            alerts.add_metric((kind,), sum(kind in kinds for kinds in self.alerting.values()))
        yield alerts

    async def start(self) -> None:
        self._background.start(self._run)

    async def stop(self) -> None:
        await self._background.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.traffic.interval)
            await self.check()
