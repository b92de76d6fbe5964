"""The watch after the switch: activations tracked by the store, shares compared, gauges set."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from edge.activation.traffic import Traffic
from edge.activation.watch import MIN_RESPONSES, WatchMonitor, WatchReport, watch_report
from edge.core.tenants import Mode
from edge.modes import ModeStore
from edge.modes.traffic import TrafficCounts
from edge.moves.service import Moves
from tests.support.cli import run_cli, write_cli_config
from tests.support.dashboard import log_in, text_of
from tests.support.redis import RedisServer
from tests.support.settings import ADMIN_TOKEN, NEW_HOST, example_settings
from tests.support.stack import stack
from tests.support.waiting import eventually

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

SETTINGS = example_settings(policy={"watch_window": "24h", "watch_rise": 0.05})
ACTIVATED = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)


def report(
    baseline: dict[str, int], after: dict[str, int], at: datetime = ACTIVATED
) -> WatchReport:
    return WatchReport(
        tenant="acme",
        activated_at=ACTIVATED,
        window=timedelta(hours=24),
        at=at,
        baseline=baseline,
        after=after,
        threshold=0.05,
    )


@pytest.mark.parametrize(
    ("baseline", "after", "alerts"),
    [
        ({"2xx": 99, "404": 1}, {"2xx": 90, "404": 10}, ("404",)),  # 1% → 10%
        ({"2xx": 99, "404": 1}, {"2xx": 96, "404": 4}, ()),  # 1% → 4%: under the rise
        ({"2xx": 90, "5xx": 10}, {"2xx": 90, "5xx": 10}, ()),  # as bad as the preview
        ({"2xx": 100}, {"2xx": 80, "5xx": 10, "404": 10}, ("5xx", "404")),
        ({}, {"2xx": 90, "5xx": 10}, ("5xx",)),  # no preview traffic: 0% to compare with
        ({"2xx": 100}, {"2xx": 1, "5xx": MIN_RESPONSES - 2}, ()),  # too few to judge
        ({"2xx": 100}, {}, ()),
    ],
)
def test_a_rise_over_the_preview_past_the_threshold_alerts(
    baseline: dict[str, int], after: dict[str, int], alerts: tuple[str, ...]
) -> None:
    assert report(baseline, after).alerts == alerts


def test_the_report_says_what_rose_and_until_when_it_watches() -> None:
    rose = report({"2xx": 99, "404": 1}, {"2xx": 90, "404": 10}, ACTIVATED + timedelta(hours=1))
    assert rose.watching
    assert rose.ends == ACTIVATED + timedelta(hours=24)
    text = "\n".join(rose.summary())
    assert "watching until 2027-01-02T12:00:00+00:00" in text
    assert "404:  1.0% in the preview (100 responses) → 10.0% since (100 responses)  ROSE" in text
    assert rose.to_json()["alerts"] == ["404"]
    later = report({}, {}, ACTIVATED + timedelta(hours=25))
    assert not later.watching
    assert "window ended" in later.summary()[0]


async def test_the_store_tracks_activations_and_restarts_the_count_at_each(
    store: ModeStore,
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert await store.activated_at("acme") is None
    await Moves(store).set_mode("acme", Mode.SETUP, actor="ana")
    assert await store.activations(before) == {}
    change = await Moves(store).set_mode("acme", Mode.ACTIVE, actor="ana")
    assert await store.activations(before) == {"acme": change.at}
    assert await store.activated_at("acme") == change.at
    assert await store.activations(change.at + timedelta(seconds=1)) == {}

    counts = TrafficCounts(responses={"acme": {"setup": {"2xx": 5}, "active": {"5xx": 3}}})
    await store.add_traffic(counts, keep=10)
    await Moves(store).set_mode("acme", Mode.SETUP, actor="ana", force=True)  # a rollback
    assert await store.activated_at("acme") is None
    assert await store.activations(before) == {}

    again = await Moves(store).set_mode("acme", Mode.ACTIVE, actor="ana")
    assert await store.activated_at("acme") == again.at
    assert await store.responses("acme") == {"setup": {"2xx": 5}}  # the baseline stays


async def test_the_monitor_warns_and_sets_the_gauge_for_a_watched_tenant_that_rose(
    store: ModeStore, caplog: pytest.LogCaptureFixture
) -> None:
    await Moves(store).set_mode("acme", Mode.ACTIVE, actor="ana")
    await Moves(store).set_mode("calm", Mode.ACTIVE, actor="ana")
    await store.add_traffic(
        TrafficCounts(
            responses={
                "acme": {"setup": {"2xx": 100}, "active": {"2xx": 60, "5xx": 40}},
                "calm": {"setup": {"2xx": 100}, "active": {"2xx": 100}},
            }
        ),
        keep=10,
    )
    traffic = Traffic(store, SETTINGS)
    monitor = WatchMonitor(store, traffic, SETTINGS)
    registry = CollectorRegistry()
    registry.register(monitor)
    await traffic.flush()
    assert traffic.watched == {"acme", "calm"}

    with caplog.at_level(logging.WARNING, logger="edge.watch"):
        await monitor.check()
        await monitor.check()  # still rising: warned once
    warnings = [r.getMessage() for r in caplog.records if r.name == "edge.watch"]
    assert len(warnings) == 1
    assert warnings[0].startswith("acme: the 5xx share rose after activation")
    assert registry.get_sample_value("edge_watch_alerts", {"kind": "5xx"}) == 1
    assert registry.get_sample_value("edge_watch_alerts", {"kind": "404"}) == 0
    assert registry.get_sample_value("edge_watch_tenants") == 2

    await Moves(store).set_mode("acme", Mode.SETUP, actor="ana", force=True)  # ops roll it back
    await traffic.flush()
    await monitor.check()
    assert registry.get_sample_value("edge_watch_alerts", {"kind": "5xx"}) == 0
    assert registry.get_sample_value("edge_watch_tenants") == 1


async def test_a_watch_report_reads_the_store(store: ModeStore) -> None:
    assert (await watch_report(store, "acme", SETTINGS)).activated_at is None
    change = await Moves(store).set_mode("acme", Mode.ACTIVE, actor="ana")
    await store.add_traffic(
        TrafficCounts(responses={"acme": {"active": {"2xx": 10}, "setup": {"404": 1}}}), keep=1
    )
    watched = await watch_report(store, "acme", SETTINGS)
    assert watched.activated_at == change.at
    assert watched.watching
    assert (watched.baseline, watched.after) == ({"404": 1}, {"2xx": 10})


# End to end: the preview's responses, an activation, then a rise in 404s.

NEW = {"Host": NEW_HOST}


def metric(admin: httpx.Client, sample: str) -> float | None:
    for line in admin.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return None


def test_after_the_switch_a_rise_in_404s_shows_in_the_api_the_cli_and_a_gauge(
    redis_server: RedisServer, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.cli("SET", f"{prefix}mode:acme", "setup")
    config_file = write_cli_config(tmp_path / "edge.toml", redis_server.url, prefix)
    with (
        stack(redis_server.url, prefix, policy={"watch_rise": 0.05}) as edge,
        edge.client() as client,
        edge.admin() as admin,
        caplog.at_level(logging.WARNING, logger="edge.watch"),
    ):
        for _ in range(20):
            assert client.get("/acme/", headers=NEW).status_code == 200  # the preview
        eventually(lambda: redis_server.cli("HGET", f"{prefix}responses:acme:setup", "2xx") == "20")
        moved = admin.put("/api/tenants/acme", json={"mode": "active"}, headers=AUTH)
        assert (
            moved.json()["change"]["note"] == "acme: no recorded legacy traffic, coverage unknown"
        )
        eventually(lambda: metric(admin, "edge_watch_tenants") == 1)

        edge.new.statuses["/acme/old-page"] = 404  # a page the new portal lost
        for _ in range(40):
            client.get("/acme/", headers=NEW)
        for _ in range(20):
            assert client.get("/acme/old-page", headers=NEW).status_code == 404

        eventually(lambda: admin.get("/api/tenants/acme/watch").json()["alerts"] == ["404"])
        eventually(lambda: metric(admin, 'edge_watch_alerts{kind="404"}') == 1)
        assert metric(admin, 'edge_watch_alerts{kind="5xx"}') == 0
        watch = admin.get("/api/tenants/acme/watch").json()
        assert watch["watching"] is True
        assert (watch["baseline"], watch["after"]) == ({"2xx": 20}, {"2xx": 40, "404": 20})
        assert any(
            "acme: the 404 share rose after activation" in r.getMessage() for r in caplog.records
        )

        with log_in(edge) as dashboard:
            page = text_of(dashboard.get("/tenants/acme"))
        assert "Watch after activation The 404 share rose after activation." in page
        assert "Edge never rolls back by itself" in page

        shown = run_cli("tenant", "watch", "acme", "--config", str(config_file))
        assert shown.returncode == 1
        assert "404:  0.0% in the preview (20 responses) → 33.3% since (60 responses)  ROSE" in (
            shown.stdout
        )
        assert redis_server.cli("GET", f"{prefix}mode:acme") == "active"  # never rolled back
