"""Prometheus /metrics on the admin listener, scraped from the whole router on loopback."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.core.asgi import Receive, Scope, Send
from edge.core.tenants import Front
from edge.modes import MemoryStore, ModeCache
from edge.observe.metrics import Metrics
from edge.observe.served import Outcome, Served
from tests.support.ports import free_port
from tests.support.redis import RedisServer
from tests.support.servers import ScriptedPortal, ServerThread
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for
from tests.support.stack import Stack, run_edge, stack
from tests.support.waiting import eventually, wait_event

LEGACY = {"Host": LEGACY_HOST}
NEW = {"Host": NEW_HOST}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def edge_stack(redis_server: RedisServer, prefix: str) -> Iterator[Stack]:
    with stack(redis_server.url, prefix) as edge:
        yield edge


def scrape(admin_url: str) -> tuple[Samples, str]:
    response = httpx.get(f"{admin_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text), response.text


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, **labels: str) -> float:
    """edge_requests_total for one label set; unnamed labels are "none"."""
    names = ("front", "mode", "decision", "reason", "status")
    return value(samples, "edge_requests_total", **{n: labels.get(n, "none") for n in names})


def test_requests_are_counted_by_front_mode_decision_and_status_class(
    redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
    redis_server.cli("SET", f"{prefix}mode:swim-school", "setup")
    with stack(redis_server.url, prefix) as edge, edge.client() as client:
        for _ in range(3):
            assert client.get("/acme-gym/classes?token=s3cret", headers=NEW).status_code == 200
        assert client.get("/acme-gym/classes", headers=LEGACY).status_code == 302
        assert client.post("/swim-school/book", headers=NEW).status_code == 403
        assert client.get("/swim-school/", headers=LEGACY).status_code == 200
        assert client.get("/swim-school/", headers={"Host": "elsewhere.test"}).status_code == 421
        assert client.get("/", headers=NEW).status_code == 404
        samples, text = scrape(edge.admin_url)

    forwarded = {"decision": "forward", "status": "2xx"}
    assert requests(samples, front="new", mode="active", **forwarded) == 3
    assert requests(samples, front="legacy", mode="setup", **forwarded) == 1
    assert requests(samples, front="legacy", mode="active", decision="redirect", status="3xx") == 1
    blocked = {"decision": "refuse", "reason": "blocked", "status": "4xx"}
    assert requests(samples, front="new", mode="setup", **blocked) == 1
    assert requests(samples, decision="refuse", reason="unknown_host", status="4xx") == 1
    assert requests(samples, front="new", decision="refuse", reason="no_tenant", status="4xx") == 1
    assert value(samples, "edge_upstream_seconds_count", front="new") == 3
    assert value(samples, "edge_upstream_seconds_count", front="legacy") == 1
    assert value(samples, "edge_in_flight_requests") == 0
    # Bounded label values only: no tenant, path, query or host ever becomes a label.
    for private in ("acme-gym", "swim-school", "classes", "s3cret", "elsewhere"):
        assert private not in text


def test_a_latency_on_a_bucket_bound_counts_in_that_bucket() -> None:
    metrics = Metrics(ModeCache(MemoryStore()))
    for seconds in (0.001, 0.0011, 30.0, 31.0):
        served = Served("id", "GET", "/t/", "127.0.0.1", front=Front.NEW, status=200)
        served.forwarded(Outcome(200, 0, seconds, None))
        metrics.observe(served)
    samples = parse(metrics.exposition("")[0].decode())
    buckets = {"0.001": 1, "0.0025": 2, "1.0": 2, "30.0": 3, "+Inf": 4}
    for le, count in buckets.items():
        assert value(samples, "edge_upstream_seconds_bucket", front="new", le=le) == count
    assert value(samples, "edge_upstream_seconds_count", front="new") == 4
    assert value(samples, "edge_upstream_seconds_sum", front="new") == pytest.approx(61.0021)
    assert value(samples, "edge_upstream_seconds_count", front="legacy") == 0
    assert requests(samples, front="new", decision="forward", status="2xx") == 4


PERIODIC = {"pass": "periodic"}


def test_the_mode_cache_and_the_store_are_visible(redis_server: RedisServer, prefix: str) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")
    redis_server.cli("SET", f"{prefix}mode:broken", "actve")
    with stack(redis_server.url, prefix) as edge, edge.client() as client:
        # Subscribed first: a subscription made later trusts nothing read before it.
        eventually(lambda: value(scrape(edge.admin_url)[0], "edge_mode_events_subscribed") == 1)
        assert client.get("/acme-gym/", headers=NEW).status_code == 200
        assert client.get("/acme-gym/", headers=NEW).status_code == 200
        assert client.get("/dance-studio/", headers=LEGACY).status_code == 200  # no key: legacy
        assert client.get("/broken/", headers=NEW).status_code == 500
        redis_server.cli("SET", f"{prefix}mode:elsewhere", "setup")  # not cached here
        redis_server.cli("SET", f"{prefix}mode:acme-gym", "active")  # as it was: still a write
        eventually(lambda: value(scrape(edge.admin_url)[0], "edge_mode_invalidations_total") == 2)
        assert client.get("/acme-gym/", headers=NEW).status_code == 200
        eventually(
            lambda: (
                value(scrape(edge.admin_url)[0], "edge_mode_resync_seconds_count", **PERIODIC) > 0
            )
        )
        samples, _ = scrape(edge.admin_url)

    assert value(samples, "edge_mode_cache_misses_total") == 4  # acme-gym again, once written
    assert value(samples, "edge_mode_cache_hits_total") == 1
    assert value(samples, "edge_mode_cache_tracking") == 1
    assert value(samples, "edge_mode_events_total") == 0
    for kind, size in {"positive": 1, "invalid": 1, "negative": 1, "unverified": 0}.items():
        assert value(samples, "edge_mode_cache_entries", kind=kind) == size
    assert value(samples, "edge_mode_resync_keys_read_total", **PERIODIC) > 0
    assert value(samples, "edge_mode_resync_seconds_sum", **PERIODIC) > 0
    assert value(samples, "edge_mode_resync_changes_total") == 0
    assert value(samples, "edge_tenants", mode="active") == 1
    assert value(samples, "edge_tenants", mode="legacy") == 1
    assert value(samples, "edge_tenants", mode="setup") == 0
    assert value(samples, "edge_tenants", mode="invalid") == 1
    assert value(samples, "edge_invalid_mode_values_total") == 1
    misconfigured = {"reason": "misconfigured", "status": "5xx"}
    assert requests(samples, front="new", mode="invalid", decision="refuse", **misconfigured) == 1
    assert value(samples, "edge_store_ready") == 1
    assert value(samples, "edge_store_errors_total") == 0
    assert math.isfinite(value(samples, "edge_mode_cache_resync_age_seconds"))


def test_a_store_outage_shows_as_errors_then_a_reconnect(
    own_redis: RedisServer, prefix: str
) -> None:
    own_redis.cli("SET", f"{prefix}mode:acme-gym", "active")
    with stack(own_redis.url, prefix) as edge, edge.client() as client:
        assert client.get("/acme-gym/", headers=NEW).status_code == 200
        eventually(lambda: value(scrape(edge.admin_url)[0], "edge_mode_events_subscribed") == 1)
        own_redis.stop()
        eventually(lambda: value(scrape(edge.admin_url)[0], "edge_store_errors_total") > 0)
        assert client.get("/acme-gym/", headers=NEW).status_code == 200  # still known
        assert client.get("/unknown/", headers=NEW).status_code == 503
        samples, _ = scrape(edge.admin_url)
        assert value(samples, "edge_mode_events_subscribed") == 0
        unavailable = {"decision": "refuse", "reason": "store_unavailable", "status": "5xx"}
        assert requests(samples, front="new", **unavailable) == 1
        own_redis.start()
        eventually(
            lambda: value(scrape(edge.admin_url)[0], "edge_mode_events_reconnects_total") >= 1,
            within=15,
        )
        assert value(scrape(edge.admin_url)[0], "edge_mode_events_subscribed") == 1


def test_upstream_failures_are_told_apart(redis_server: RedisServer, prefix: str) -> None:
    dies_mid_body = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    redis_server.cli("SET", f"{prefix}mode:acme-gym", "setup")
    closed_port = f"http://127.0.0.1:{free_port()}"
    with ScriptedPortal(lambda _: dies_mid_body, hang_up=True) as new_backend:
        raw = settings_for(closed_port, new_backend.url, redis_server.url, prefix)
        with run_edge(raw) as (_, public_url, admin_url):
            with httpx.Client(base_url=public_url, timeout=10) as client:
                assert client.get("/acme-gym/", headers=LEGACY).status_code == 502
                with pytest.raises(httpx.RemoteProtocolError):
                    client.get("/acme-gym/", headers=NEW)
            eventually(lambda: value(scrape(admin_url)[0], "edge_in_flight_requests") == 0)
            samples, _ = scrape(admin_url)

    unreachable = {"reason": "upstream_unreachable", "status": "5xx"}
    assert requests(samples, front="legacy", mode="setup", decision="forward", **unreachable) == 1
    aborted = {"reason": "upstream_aborted", "status": "2xx"}
    assert requests(samples, front="new", mode="setup", decision="forward", **aborted) == 1
    assert value(samples, "edge_upstream_seconds_count", front="legacy") == 1
    assert value(samples, "edge_upstream_seconds_count", front="new") == 1


class HeldBackend:
    """Answers only once ``release`` is set, so a request stays in flight meanwhile."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await wait_event(self.release, 10)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})


@contextmanager
def held_edge(redis_server: RedisServer, prefix: str) -> Iterator[tuple[HeldBackend, str, str]]:
    backend = HeldBackend()
    with ServerThread(backend) as server:
        raw = settings_for(server.url, server.url, redis_server.url, prefix)
        with run_edge(raw) as (_, public_url, admin_url):
            try:
                yield backend, public_url, admin_url
            finally:
                backend.release.set()


def test_in_flight_requests_are_counted_while_they_last(
    redis_server: RedisServer, prefix: str
) -> None:
    with held_edge(redis_server, prefix) as (backend, public_url, admin_url):
        answers: list[Any] = []
        worker = threading.Thread(
            target=lambda: answers.append(httpx.get(f"{public_url}/acme/", headers=LEGACY))
        )
        worker.start()
        eventually(lambda: value(scrape(admin_url)[0], "edge_in_flight_requests") == 1)
        backend.release.set()
        worker.join(10)
        assert answers[0].status_code == 200
        eventually(lambda: value(scrape(admin_url)[0], "edge_in_flight_requests") == 0)


def test_prometheus_can_ask_for_openmetrics(edge_stack: Stack) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    response = httpx.get(f"{edge_stack.admin_url}/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_the_public_listener_never_serves_metrics(edge_stack: Stack) -> None:
    with edge_stack.client() as client:
        response = client.get("/metrics", headers={"Host": "127.0.0.1"})
    assert response.status_code == 421
    assert "edge_requests" not in response.text
