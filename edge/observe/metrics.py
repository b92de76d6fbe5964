"""The process's Prometheus metrics, served as ``/metrics`` on the admin listener.

Labels come from small fixed sets only (front, mode, decision, reason, status class): never a
tenant, a path or a raw method. On the request path counting is plain arithmetic: a dict entry
per label combination, a bucket index for the latency. prometheus_client's own Counter and
Histogram would take a lock per number, about 2 us a request; requests and scrapes both run on
the event loop's thread, so no lock is needed. Everything is turned into Prometheus families at
scrape time, with the mode cache's counters and the in-flight count.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from edge.core.tenants import Front, Mode
from edge.modes import ModeCache
from edge.observe.served import Served

if TYPE_CHECKING:
    from edge.observe.logs import AccessLog

UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BUCKET_LABELS = [*(str(float(bound)) for bound in UPSTREAM_BUCKETS), "+Inf"]  # le="1.0"
_NONE = "none"
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}

_RequestKey = tuple[Front | None, str | None, str, str | None, int]


class Latency:
    """One histogram's numbers: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(UPSTREAM_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(UPSTREAM_BUCKETS, seconds)] += 1
        self.total += seconds


class Metrics:
    def __init__(self, cache: ModeCache, access_log: AccessLog | None = None) -> None:
        self.registry = CollectorRegistry()
        self.in_flight = 0  # kept by the router
        self.underscored_headers = 0  # request headers not forwarded for a "_" in the name
        self.requests: dict[_RequestKey, int] = {}
        self.upstream = {front: Latency() for front in Front}
        self.registry.register(_Collector(self, cache, access_log))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe(self, served: Served) -> None:
        """Count one finished request; called by the router for every request."""
        key = (served.front, served.mode, served.decision, served.reason, served.status // 100)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if served.upstream_seconds is not None and served.front is not None:
            self.upstream[served.front].observe(served.upstream_seconds)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The scrape's body and content type: Prometheus text, or OpenMetrics on request."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class _Collector(Collector):
    """The plain numbers of Metrics and the mode cache, as Prometheus families."""

    def __init__(self, metrics: Metrics, cache: ModeCache, access_log: AccessLog | None) -> None:
        self.metrics = metrics
        self.cache = cache
        self.access_log = access_log

    def collect(self) -> Iterable[Metric]:
        yield self._requests()
        yield self._upstream()
        stats = self.cache.stats
        yield _gauge(
            "edge_in_flight_requests", "Public requests being served.", self.metrics.in_flight
        )
        yield _counter(
            "edge_underscored_headers_dropped",
            "Request headers not forwarded because their name holds an underscore.",
            self.metrics.underscored_headers,
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
            "Times the subscription to the store's notices was made again after being lost.",
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
            "1 while the subscription to the store's notices (events, invalidations) is in place.",
            int(self.cache.listening),
        )
        yield _gauge(
            "edge_mode_cache_tracking",
            "1 while the store reports every write to the mode keys (Redis 6+ tracking).",
            int(self.cache.listening and self.cache.tracked),
        )
        yield _counter(
            "edge_mode_invalidations",
            "Tenants whose mode key Redis reported written, raw edits included "
            "(a flush counts one).",
            stats.invalidations,
        )
        yield _counter(
            "edge_mode_events",
            "Mode changes made through edge, announced and received (on a Redis Cluster, once per "
            "primary).",
            stats.events,
        )
        yield from self._resyncs()
        counts = self.cache.counts()
        tenants = GaugeMetricFamily(
            "edge_tenants",
            "Tenants in this process's mode cache, by mode (the tenants it has served).",
            labels=("mode",),
        )
        for mode in (*Mode, None):
            tenants.add_metric((mode.value if mode else "invalid",), counts.get(mode, 0))
        yield tenants
        entries = GaugeMetricFamily(
            "edge_mode_cache_entries",
            "Entries of this process's mode cache by kind: positive (a mode), invalid (a value "
            "that is not one), negative (no key), unverified (kept while not yet read again).",
            labels=("kind",),
        )
        for kind, size in self.cache.kinds().items():
            entries.add_metric((kind,), size)
        yield entries
        if self.access_log is not None:
            yield _counter(
                "edge_access_log_dropped_lines",
                "Access lines lost: the queue was full, or stdout failed.",
                self.access_log.dropped + self.access_log.failed,
            )

    def _resyncs(self) -> Iterable[Metric]:
        labels = ("pass",)
        seconds = SummaryMetricFamily(
            "edge_mode_resync_seconds",
            "Resyncs with the store and their duration: the periodic safety net, and the pass "
            "that reads the cache back after the store's notices were interrupted.",
            labels=labels,
        )
        keys = CounterMetricFamily(
            "edge_mode_resync_keys_read", "Mode keys read by resyncs.", labels=labels
        )
        for name, totals in self.cache.stats.resyncs.items():
            seconds.add_metric((name,), totals.runs, totals.seconds)
            keys.add_metric((name,), totals.keys)
        yield seconds
        yield keys
        yield _counter(
            "edge_mode_resync_changes",
            "Changes a periodic resync found: writes that no notice reported.",
            self.cache.stats.resync_changes,
        )

    def _requests(self) -> Metric:
        family = CounterMetricFamily(
            "edge_requests",
            "Public requests by front, mode, decision, reason and status class.",
            labels=("front", "mode", "decision", "reason", "status"),
        )
        for (front, mode, decision, reason, status_class), count in self.metrics.requests.items():
            status = _STATUS_CLASSES.get(status_class, "other")
            labels = (front or _NONE, mode or _NONE, decision, reason or _NONE, status)
            family.add_metric(labels, count)
        return family

    def _upstream(self) -> Metric:
        family = HistogramMetricFamily(
            "edge_upstream_seconds",
            "Forwarded requests: seconds from sending to a portal to relaying its last byte.",
            labels=("front",),
        )
        for front, latency in self.metrics.upstream.items():
            buckets = list(zip(_BUCKET_LABELS, accumulate(latency.counts), strict=True))
            family.add_metric((front.value,), buckets, latency.total)
        return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
