"""The process's Prometheus metrics, served as ``/metrics`` on the admin listener.

Labels come from small fixed sets only (front, mode, decision, reason, status class): never a
tenant, a path or a raw method. Counting a request costs a dict look-up and one locked add:
each label combination's series is resolved once, the first time it is seen, and kept. The
mode cache's own counters and the in-flight count are plain numbers read at scrape time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from edge.modes import ModeCache
from edge.policy import Mode
from edge.served import Served
from edge.tenants import Front

if TYPE_CHECKING:
    from edge.logs import AccessLog

UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_NONE = "none"
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

_RequestKey = tuple[Front | None, str | None, str, str | None, int]

# No ``*_created`` series next to every counter and histogram: they would double the series
# for a start time that process_start_time_seconds already gives.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self, cache: ModeCache, access_log: AccessLog | None = None) -> None:
        self.registry = CollectorRegistry()
        self.in_flight = 0  # kept by the router
        self.requests = Counter(
            "edge_requests",
            "Public requests by front, mode, decision, reason and status class.",
            ("front", "mode", "decision", "reason", "status"),
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "edge_upstream_seconds",
            "Forwarded requests: seconds from sending to a portal to relaying its last byte.",
            ("front",),
            buckets=UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        self._requests: dict[_RequestKey, Counter] = {}
        self._upstream = {front: self.upstream_seconds.labels(front.value) for front in Front}
        self.registry.register(_StateCollector(self, cache, access_log))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe(self, served: Served) -> None:
        """Count one finished request; called by the router for every request."""
        key = (served.front, served.mode, served.decision, served.reason, served.status // 100)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = self._series(key)
        series.inc()
        if served.upstream_seconds is not None and served.front is not None:
            self._upstream[served.front].observe(served.upstream_seconds)

    def _series(self, key: _RequestKey) -> Counter:
        front, mode, decision, reason, status_class = key
        return self.requests.labels(
            front or _NONE,
            mode or _NONE,
            decision,
            reason or _NONE,
            _STATUS_CLASSES.get(status_class, "other"),
        )

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The scrape's body and content type: Prometheus text, or OpenMetrics on request."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class _StateCollector(Collector):
    """Numbers kept elsewhere as plain attributes, read at scrape time."""

    def __init__(self, metrics: Metrics, cache: ModeCache, access_log: AccessLog | None) -> None:
        self.metrics = metrics
        self.cache = cache
        self.access_log = access_log

    def collect(self) -> Iterable[Metric]:
        stats = self.cache.stats
        yield _gauge(
            "edge_in_flight_requests", "Public requests being served.", self.metrics.in_flight
        )
        yield _counter("edge_mode_cache_hits", "Mode look-ups answered by the cache.", stats.hits)
        yield _counter(
            "edge_mode_cache_misses", "Mode look-ups the cache had to fetch.", stats.misses
        )
        yield _counter(
            "edge_store_errors",
            "Mode store calls that failed or timed out (fetches, resyncs, subscriptions).",
            stats.store_errors,
        )
        yield _counter(
            "edge_mode_events_reconnects",
            "Times the mode event subscription was made again after being lost.",
            stats.reconnects,
        )
        yield _counter(
            "edge_invalid_mode_values",
            "Stored values found that are not a mode (each value counted once per tenant).",
            stats.invalid_values,
        )
        age = stats.age()
        yield _gauge(
            "edge_mode_cache_resync_age_seconds",
            "Seconds since the last successful resync with the store (+Inf: never).",
            math.inf if age is None else age,
        )
        yield _gauge("edge_store_ready", "1 once the store has answered.", int(self.cache.ready))
        yield _gauge(
            "edge_mode_events_subscribed",
            "1 while the mode event subscription is in place.",
            int(self.cache.listening),
        )
        counts = self.cache.counts()
        tenants = GaugeMetricFamily(
            "edge_tenants",
            "Tenants in this process's mode cache, by mode (the tenants it has served).",
            labels=("mode",),
        )
        for mode in (*Mode, None):
            tenants.add_metric((mode.value if mode else "invalid",), counts.get(mode, 0))
        yield tenants
        if self.access_log is not None:
            yield _counter(
                "edge_access_log_dropped_lines",
                "Access lines lost: the queue was full, or stdout failed.",
                self.access_log.dropped + self.access_log.failed,
            )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
