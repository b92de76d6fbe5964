"""The traffic counts the store keeps for safe activation, whichever store it is.

Per tenant: the legacy paths customers request (deep links, with counts) while the tenant is
legacy or setup, and the new portal's responses by status class in two phases: ``setup``
(the preview, the baseline) and ``active`` (the watch after activation, restarted at each
activation). For the transition insight (docs/activation.md): the outside pages that send
customers to the legacy portal (referrers), an active tenant's legacy-portal requests per
day, and the shadow's parity counts. Every process adds what it counted since its last flush.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate

STATUS_CLASSES = ("2xx", "3xx", "404", "4xx", "5xx")  # "4xx": client errors other than 404
# Counts nobody has added to for this long are dropped (a tenant that left, a finished watch).
RETENTION_SECONDS = 90 * 86400
# Deep links are kept up to twice the number reported, so that a path on its way up is not
# dropped the moment it first appears.
KEEP_SLACK = 2
# A recorded path longer than this is not a bookmark anyone typed: it is dropped (deep
# links), or not mirrored (shadow parity).
MAX_PATH = 1024
# Referrers and parity disagreements kept per tenant (up to KEEP_SLACK times as many stored).
REFERRERS_KEPT = 100
DISAGREEMENTS_KEPT = 50
# Latency buckets of the parity's p95, in ms: a bounded histogram that adds up across
# processes. A p95 is reported as the upper bound of its bucket; past the last, as the last.
LATENCY_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
PORTALS = ("legacy", "new")


def status_class(status: int) -> str | None:
    """The class a response is counted in; None for one not to count: the client left (499)
    or stalled (edge's 408; a portal's own 408 goes uncounted with it)."""
    if status == 404:
        return "404"
    if status in (408, 499) or not 200 <= status < 600:
        return None
    return f"{status // 100}xx"


def latency_bucket(ms: float) -> int:
    """The index of the LATENCY_BOUNDS_MS bucket ``ms`` falls in (len() past the last)."""
    for index, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return index
    return len(LATENCY_BOUNDS_MS)


def p95_ms(buckets: dict[int, int]) -> int | None:
    """The upper bound of the bucket holding the 95th percentile; None without samples."""
    indexes = sorted(index for index, n in buckets.items() if n > 0)
    if not indexes:
        return None
    cumulative = list(accumulate(buckets[index] for index in indexes))
    index = indexes[bisect_left(cumulative, 0.95 * cumulative[-1])]
    return LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)]


@dataclass(frozen=True, order=True)
class Disagreement:
    """A legacy path whose mirrored read the new portal answered in another status class."""

    path: str
    new_path: str
    legacy_status: int
    new_status: int  # 0: the new portal gave no answer (refused, timed out)


@dataclass
class ParityCounts:
    """The shadow's comparisons for one tenant."""

    mirrored: int = 0
    agreeing: int = 0
    disagreeing: dict[Disagreement, int] = field(default_factory=dict)
    latency: dict[str, dict[int, int]] = field(default_factory=dict)  # portal → bucket → n
    # Paths whose mirrors all agreed since the last flush: their past disagreements are
    # forgotten (the page was fixed, or a rule added), so they no longer block activation.
    fixed: set[str] = field(default_factory=set)

    def add(self, other: ParityCounts) -> None:
        self.mirrored += other.mirrored
        self.agreeing += other.agreeing
        if other.fixed:
            self.disagreeing = {
                key: n for key, n in self.disagreeing.items() if key.path not in other.fixed
            }
        for key, n in other.disagreeing.items():
            self.disagreeing[key] = self.disagreeing.get(key, 0) + n
        for portal, buckets in other.latency.items():
            mine = self.latency.setdefault(portal, {})
            for index, n in buckets.items():
                mine[index] = mine.get(index, 0) + n


@dataclass
class TrafficCounts:
    """One process's counts since its last flush."""

    deep_links: dict[str, dict[str, int]] = field(default_factory=dict)  # tenant → path → n
    responses: dict[str, dict[str, dict[str, int]]] = field(
        default_factory=dict
    )  # tenant → phase → status class → n
    referrers: dict[str, dict[str, int]] = field(default_factory=dict)  # tenant → page → n
    legacy_hits: dict[str, int] = field(default_factory=dict)  # active tenant → requests
    parity: dict[str, ParityCounts] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))  # last seen, day counted

    def __bool__(self) -> bool:
        return bool(
            self.deep_links or self.responses or self.referrers or self.legacy_hits or self.parity
        )

    def tenants(self) -> list[str]:
        return sorted(
            self.deep_links.keys()
            | self.responses.keys()
            | self.referrers.keys()
            | self.legacy_hits.keys()
            | self.parity.keys()
        )

    def only(self, tenants: set[str]) -> TrafficCounts:
        """These counts for ``tenants`` alone."""
        return TrafficCounts(
            {tenant: paths for tenant, paths in self.deep_links.items() if tenant in tenants},
            {tenant: phases for tenant, phases in self.responses.items() if tenant in tenants},
            {tenant: pages for tenant, pages in self.referrers.items() if tenant in tenants},
            {tenant: n for tenant, n in self.legacy_hits.items() if tenant in tenants},
            {tenant: counts for tenant, counts in self.parity.items() if tenant in tenants},
            self.at,
        )

    def requests(self) -> int:
        """How many requests these counts stand for (a mirrored one is its customer's)."""
        links = sum(n for paths in self.deep_links.values() for n in paths.values())
        answers = sum(
            n for phases in self.responses.values() for c in phases.values() for n in c.values()
        )
        referred = sum(n for pages in self.referrers.values() for n in pages.values())
        return links + answers + referred + sum(self.legacy_hits.values())

    @property
    def day(self) -> str:
        return self.at.date().isoformat()
