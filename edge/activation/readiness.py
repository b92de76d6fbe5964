"""Readiness: will a tenant's customers' bookmarks land somewhere real once it is active?

Each recorded deep link is mapped through the redirect rules (the Location an active tenant's
legacy URL gets) and the new backend is asked for it with a GET carrying the tenant, as edge
forwards setup-mode previews: off the hot path, with bounded concurrency and requests per
second. Coverage is the share of recorded requests whose page answers 2xx or 3xx.

Activation (a move to active without force, by any path: CLI, admin API, dashboard, schedule,
bulk) goes through ``ReadinessCheck.guard``, which the move service (edge.moves.service) calls
before the store's atomic set: it refuses below ``[policy].activation_coverage``, and while
shadow parity (edge.activation.parity) has paths the new portal loses. A tenant with no
recorded traffic has no
coverage to judge: it is allowed, and the audit note says the coverage was unknown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from edge.activation.parity import parity_report
from edge.config import PolicySettings, UpstreamSettings
from edge.core.refusals import ChangeRefused
from edge.core.tenants import Mode
from edge.forwarding.headers import Backend
from edge.modes import ModeStore

USER_AGENT = "edge-readiness"
WORST = 10  # failing paths a report lists


@dataclass(frozen=True)
class PathCheck:
    """One recorded legacy path, where it lands on the new portal, and what that answered."""

    path: str
    target: str
    requests: int
    status: int | None  # None: no answer (refused, timed out)
    error: str | None = None

    @property
    def resolves(self) -> bool:
        return self.status is not None and 200 <= self.status < 400

    @property
    def outcome(self) -> str:
        return str(self.status) if self.status is not None else f"no answer ({self.error})"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "target": self.target,
            "requests": self.requests,
            "status": self.status,
            "error": self.error,
            "resolves": self.resolves,
        }


@dataclass(frozen=True)
class ReadinessReport:
    tenant: str
    checks: tuple[PathCheck, ...]  # most requested first
    threshold: float
    at: datetime

    @property
    def requests(self) -> int:
        return sum(check.requests for check in self.checks)

    @property
    def resolved(self) -> int:
        return sum(check.requests for check in self.checks if check.resolves)

    @property
    def coverage(self) -> float | None:
        """Resolved share of recorded requests; None without recorded traffic."""
        return self.resolved / self.requests if self.requests else None

    @property
    def ready(self) -> bool:
        return self.coverage is None or self.coverage >= self.threshold

    def worst(self, limit: int = WORST) -> list[PathCheck]:
        """The failing paths that most customers request."""
        return [check for check in self.checks if not check.resolves][:limit]

    def headline(self) -> str:
        if self.coverage is None:
            return f"{self.tenant}: no recorded legacy traffic, coverage unknown"
        return (
            f"{self.tenant}: {self.coverage:.1%} of {self.requests} recorded requests "
            f"({len(self.checks)} paths) resolve on the new portal"
        )

    def summary(self) -> str:
        """The headline and the three worst paths, for messages and the audit note."""
        worst = self.worst(3)
        if not worst:
            return self.headline()
        return f"{self.headline()}; worst: " + ", ".join(
            f"{check.path} → {check.target} ({check.requests} requests, {check.outcome})"
            for check in worst
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "at": self.at.isoformat(),
            "requests": self.requests,
            "resolved": self.resolved,
            "paths": len(self.checks),
            "coverage": self.coverage,
            "threshold": self.threshold,
            "ready": self.ready,
            "headline": self.headline(),
            "worst": [check.to_json() for check in self.worst()],
        }


class NewPortalPages(Protocol):
    """Where a tenant's pages are on the new portal (edge.routing.decide.Policy is one)."""

    def new_page(self, tenant: str, path: str, query: str = "") -> str:
        """The public URL of a new-portal path."""
        ...

    def new_path(self, tenant: str, path: str) -> str:
        """Where a legacy path maps on the new portal."""
        ...


class NotReady(ChangeRefused):
    """An activation refused: too few deep links resolve on the new portal, or (``parity``,
    edge.activation.parity) the shadow saw the new portal lose pages the legacy one serves."""

    def __init__(self, report: ReadinessReport, parity: str = "") -> None:
        self.report = report
        self.parity = parity
        super().__init__(self.says("force"))

    def says(self, force: str) -> str:
        parity = f"{self.parity}; " if self.parity else ""
        return (
            f"{self.report.summary()}; {parity}activating needs {self.report.threshold:.0%} "
            f"coverage. Add the missing pages or path rules, or use {force} to activate anyway"
        )


class _Pace:
    """Lets at most ``rate`` requests start per second."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate
        self.next = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        start = max(now, self.next)
        self.next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class ReadinessCheck:
    """Reads a tenant's recorded deep links from the store and probes the new portal.

    ``backend`` is the new portal as forwarding speaks to it (the client's Host, here the
    public one, or the backend URL's); ``clock`` dates the reports.
    """

    def __init__(
        self,
        store: ModeStore,
        pages: NewPortalPages,
        backend: Backend,
        policy: PolicySettings,
        upstream: UpstreamSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.pages = pages
        self.backend = backend
        self.keep = policy.deep_links
        self.threshold = policy.activation_coverage
        self.rate = policy.readiness_rate
        self.concurrency = policy.readiness_concurrency
        self.timeout = httpx.Timeout(upstream.read_timeout, connect=upstream.connect_timeout)
        self.clock = clock

    async def report(self, tenant: str) -> ReadinessReport:
        links = await self.store.deep_links(tenant, self.keep)
        return await self.probe(tenant, links)

    async def guard(self, tenant: str) -> str:
        """The activation guard of the move service: NotReady below the threshold, else a note."""
        if Mode.parse(await self.store.get(tenant)) is Mode.ACTIVE:
            return ""
        report = await self.report(tenant)
        parity = await parity_report(self.store, tenant)
        if not report.ready or parity.blocking:
            raise NotReady(report, parity.refusal())
        return "; ".join(filter(None, (report.summary(), parity.note())))

    async def probe(self, tenant: str, links: Sequence[tuple[str, int]]) -> ReadinessReport:
        public = urlsplit(self.pages.new_page(tenant, "/"))
        headers = {
            **({"host": public.netloc} if self.backend.keep_host else {}),
            "user-agent": USER_AGENT,
            "x-edge-tenant": tenant,
            "x-edge-mode": Mode.SETUP.value,
            "x-forwarded-proto": public.scheme,
            "x-forwarded-host": public.netloc,
        }
        pace = _Pace(self.rate)
        slots = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency)

        async def fetch(client: httpx.AsyncClient, target: str) -> tuple[int | None, str | None]:
            async with slots:
                await pace.wait()
                try:
                    url = self.backend.url + target
                    async with client.stream("GET", url, headers=headers) as response:
                        return response.status_code, None
                except httpx.HTTPError as exc:
                    return None, str(exc) or type(exc).__name__

        # Paths that map to the same page (say, every unmapped one to home) cost one probe.
        targets = {path: self.pages.new_path(tenant, path) for path, _ in links}
        unique = sorted(set(targets.values()))
        async with httpx.AsyncClient(
            timeout=self.timeout,
            limits=limits,
            trust_env=False,
            follow_redirects=False,
            verify=self.backend.origin.tls or True,  # an https:// portal: as forwarding speaks it
        ) as client:
            answers = dict(
                zip(unique, await asyncio.gather(*(fetch(client, t) for t in unique)), strict=True)
            )
        checks = sorted(
            (PathCheck(path, targets[path], n, *answers[targets[path]]) for path, n in links),
            key=lambda check: check.requests,
            reverse=True,
        )
        return ReadinessReport(tenant, tuple(checks), self.threshold, self.clock())
