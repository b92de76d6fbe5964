"""Readiness: recorded deep links probed on the new portal; activation refused below coverage."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge import config
from edge.activation.readiness import USER_AGENT, NotReady
from edge.admin.models import TenantRefused
from edge.config import StoreSettings
from edge.core.asgi import Receive, Scope, Send
from edge.core.refusals import ChangeRefused
from edge.core.tenants import Mode
from edge.modes import ModeStore, open_store
from edge.modes.traffic import TrafficCounts
from edge.moves.schedule import Scheduler
from edge.moves.service import BulkMove, MoveOutcome
from edge.serving.compose import Parts
from tests.support.cli import cli_config, run_cli
from tests.support.dashboard import csrf_of, log_in, text_of
from tests.support.redis import RedisServer
from tests.support.servers import ServerThread
from tests.support.settings import ADMIN_TOKEN, LEGACY_HOST, NEW_HOST, example_settings
from tests.support.stack import RecordingBackend, Stack, stack
from tests.support.waiting import eventually

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# The acme customers' bookmarks, by how often they were requested on the legacy portal.
BOOKMARKS = {
    "/acme/": 50,  # no rule: the new home
    "/acme/classes": 30,  # → /acme/schedule
    "/acme/classes/42": 10,  # → /acme/schedule/42
    "/acme/invoices": 6,  # → /acme/billing/invoices
    "/acme/old news": 4,  # no rule: the new home
}


RULES = [
    {"from": "/{tenant}/classes", "to": "/{tenant}/schedule"},
    {"from": "/{tenant}/invoices", "to": "/{tenant}/billing/invoices"},
]


def settings_for(backend: str, **policy: Any) -> config.Settings:
    """The example fronts, the new one on ``backend``, and the path rules of the bookmarks."""
    return example_settings(
        legacy={"backend": "http://127.0.0.1:9"},
        new={"backend": backend},
        policy={"path_rules": RULES, "readiness_rate": 200, **policy},
    )


@pytest.fixture(scope="module")
def portal() -> Iterator[tuple[RecordingBackend, str]]:
    backend = RecordingBackend("new")
    with ServerThread(backend) as server:
        yield backend, server.url


@pytest.fixture
async def store(store: ModeStore) -> ModeStore:
    """Each store kind (conftest's), with acme's bookmarks recorded."""
    await store.add_traffic(TrafficCounts(deep_links={"acme": BOOKMARKS}), keep=500)
    return store


@pytest.fixture
def new_portal(portal: tuple[RecordingBackend, str]) -> Iterator[tuple[RecordingBackend, str]]:
    backend, url = portal
    backend.seen.clear()
    backend.statuses = {"/acme/schedule/42": 404, "/acme/billing/invoices": 500}
    yield backend, url
    backend.statuses = {}


async def test_coverage_is_the_share_of_recorded_requests_that_resolve(
    store: ModeStore, new_portal: tuple[RecordingBackend, str]
) -> None:
    backend, url = new_portal
    report = await Parts(settings_for(url), store).readiness.report("acme")

    assert (report.requests, report.resolved) == (100, 84)
    assert report.coverage == pytest.approx(0.84)
    assert not report.ready
    assert [(c.path, c.target, c.requests, c.status) for c in report.worst()] == [
        ("/acme/classes/42", "/acme/schedule/42", 10, 404),
        ("/acme/invoices", "/acme/billing/invoices", 6, 500),
    ]
    assert report.summary() == (
        "acme: 84.0% of 100 recorded requests (5 paths) resolve on the new portal; worst: "
        "/acme/classes/42 → /acme/schedule/42 (10 requests, 404), "
        "/acme/invoices → /acme/billing/invoices (6 requests, 500)"
    )
    # Each page probed once (the two unmapped paths share the home), safely, as the tenant.
    assert sorted(seen.path for seen in backend.seen) == [
        "/acme/",
        "/acme/billing/invoices",
        "/acme/schedule",
        "/acme/schedule/42",
    ]
    for seen in backend.seen:
        assert seen.method == "GET"
        assert seen.header("x-edge-tenant") == "acme"
        assert seen.header("x-edge-mode") == "setup"
        assert seen.header("host") == "portal.example.com"
        assert seen.header("user-agent") == USER_AGENT


async def test_probes_send_the_host_the_portal_gets_from_edge(
    store: ModeStore, new_portal: tuple[RecordingBackend, str]
) -> None:
    backend, url = new_portal
    settings = settings_for(url)
    own_host = settings.model_copy(
        update={"new": settings.new.model_copy(update={"host_header": "backend"})}
    )
    await Parts(own_host, store).readiness.report("acme")
    assert {seen.header("host") for seen in backend.seen} == {url.removeprefix("http://")}


async def test_a_portal_that_cannot_be_reached_covers_nothing(store: ModeStore) -> None:
    report = await Parts(settings_for("http://127.0.0.1:9"), store).readiness.report("acme")
    assert report.coverage == 0
    assert all(check.status is None and check.error for check in report.checks)
    assert "no answer" in report.summary()


async def test_activation_is_refused_below_the_threshold_and_allowed_once_pages_exist(
    store: ModeStore, new_portal: tuple[RecordingBackend, str]
) -> None:
    backend, url = new_portal
    moves = Parts(settings_for(url), store).moves
    await moves.set_mode("acme", Mode.SETUP, actor="ana")

    with pytest.raises(NotReady) as refused:
        await moves.set_mode("acme", Mode.ACTIVE, actor="ana")
    assert "acme: 84.0% of 100 recorded requests" in str(refused.value)
    assert "activating needs 95%" in str(refused.value)
    assert isinstance(refused.value, ChangeRefused)
    assert await store.get("acme") == "setup"
    assert len(await store.history("acme")) == 1

    backend.statuses = {}  # the missing pages are added
    change = await moves.set_mode("acme", Mode.ACTIVE, actor="ana")
    assert change.changed
    assert change.note.startswith("acme: 100.0% of 100 recorded requests")
    assert (await store.history("acme"))[0].note == change.note


async def test_force_activates_without_asking_and_says_so_in_the_audit(
    store: ModeStore, new_portal: tuple[RecordingBackend, str]
) -> None:
    backend, url = new_portal
    moves = Parts(settings_for(url), store).moves
    change = await moves.set_mode("acme", Mode.ACTIVE, actor="ana", force=True)
    assert change.note == "forced: readiness not checked"
    assert backend.seen == []
    assert await store.get("acme") == "active"


async def test_only_activation_is_guarded(
    store: ModeStore, new_portal: tuple[RecordingBackend, str]
) -> None:
    backend, url = new_portal
    moves = Parts(settings_for(url), store).moves
    await moves.set_mode("acme", Mode.SETUP, actor="ana")
    await moves.set_mode("acme", Mode.ACTIVE, actor="ana", force=True)
    await moves.set_mode("acme", Mode.ACTIVE, actor="ana")  # already active: nothing to check
    await moves.set_mode("acme", Mode.LEGACY, actor="ana", force=True)
    assert backend.seen == []


async def test_a_tenant_with_no_recorded_traffic_is_activated_with_coverage_unknown(
    store: ModeStore, new_portal: tuple[RecordingBackend, str]
) -> None:
    _, url = new_portal
    moves = Parts(settings_for(url), store).moves
    change = await moves.set_mode("quiet-gym", Mode.ACTIVE, actor="ana")
    assert change.note == "quiet-gym: no recorded legacy traffic, coverage unknown"


async def test_a_lower_threshold_lets_it_through(
    store: ModeStore, new_portal: tuple[RecordingBackend, str]
) -> None:
    _, url = new_portal
    moves = Parts(settings_for(url, activation_coverage=0.8), store).moves
    assert (await moves.set_mode("acme", Mode.ACTIVE, actor="ana")).changed


class SlowPortal:
    """Holds every request until ``width`` are in flight at once, then answers them all, and
    remembers the most it had at once."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.full = asyncio.Event()
        self.in_flight = self.most = self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.width:
            self.full.set()
        await asyncio.wait_for(self.full.wait(), 10)  # fails, not hangs, if never that wide
        self.in_flight -= 1
        self.served += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_probes_are_bounded_in_concurrency() -> None:
    slow = SlowPortal(width=3)
    with ServerThread(slow) as server:
        check = Parts(
            settings_for(server.url, readiness_concurrency=3, readiness_rate=1000),
            open_store(StoreSettings(url="memory://")),
        ).readiness
        links = [(f"/acme/classes/{n}", 1) for n in range(30)]  # 30 distinct pages
        report = await check.probe("acme", links)
    assert report.coverage == 1
    assert slow.served == 30
    assert slow.most == 3


# End to end: customers' traffic through a real edge, then activation by the API and the CLI.


@pytest.fixture
def lacking(redis_server: RedisServer, prefix: str, tmp_path: Path) -> Iterator[tuple[Stack, Path]]:
    """acme in setup, 10 customer requests recorded; its new portal lacks one of the pages."""
    redis_server.cli("SET", f"{prefix}mode:acme", "setup")
    with stack(redis_server.url, prefix, policy={"path_rules": RULES}) as edge:
        settings = edge.edge.settings
        config_file = tmp_path / "edge.toml"
        config_file.write_text(
            cli_config(
                redis_server.url,
                prefix,
                legacy=settings.legacy.backend,
                new=settings.new.backend,
                hosts=(LEGACY_HOST, NEW_HOST),
                policy={"path_rules": RULES},
            )
        )
        edge.new.statuses["/acme/billing/invoices"] = 404  # the new portal lacks it
        with edge.client() as client:
            for path, times in {"/acme/": 6, "/acme/classes": 3, "/acme/invoices": 1}.items():
                for _ in range(times):
                    assert client.get(path, headers={"Host": LEGACY_HOST}).status_code == 200

        def recorded() -> int:
            flat = redis_server.cli("ZRANGE", f"{prefix}deeplinks:acme", "0", "-1", "WITHSCORES")
            return sum(int(count) for count in flat.split("\n")[1::2]) if flat else 0

        eventually(lambda: recorded() == 10)
        yield edge, config_file


def test_a_tenant_whose_portal_lacks_pages_is_refused_activation_until_they_exist(
    lacking: tuple[Stack, Path], redis_server: RedisServer, prefix: str
) -> None:
    edge, config_file = lacking
    cli = ["--config", str(config_file)]
    with edge.admin() as admin:
        report = admin.get("/api/tenants/acme/readiness").raise_for_status().json()
        assert (report["requests"], report["resolved"], report["ready"]) == (10, 9, False)
        assert report["coverage"] == pytest.approx(0.9)
        assert [(w["path"], w["target"], w["requests"], w["status"]) for w in report["worst"]] == [
            ("/acme/invoices", "/acme/billing/invoices", 1, 404)
        ]
        refused = admin.put("/api/tenants/acme", json={"mode": "active"}, headers=AUTH)
    assert refused.status_code == 409
    assert refused.json()["error"].startswith("acme: 90.0% of 10 recorded requests (3 paths)")
    assert refused.json()["readiness"]["coverage"] == pytest.approx(0.9)
    TenantRefused.model_validate(refused.json())  # the shape the OpenAPI document gives
    assert redis_server.cli("GET", f"{prefix}mode:acme") == "setup"

    checked = run_cli("tenant", "readiness", "acme", *cli)
    assert checked.returncode == 1
    assert "acme: 90.0% of 10 recorded requests (3 paths) resolve" in checked.stdout
    assert "NOT ready (activation needs 95%)" in checked.stdout
    assert "1 requests  404  /acme/invoices → /acme/billing/invoices" in checked.stdout
    activated = run_cli("tenant", "set", "acme", "active", *cli)
    assert activated.returncode == 1
    assert "refused: acme: 90.0% of 10 recorded requests" in activated.stderr
    assert "--force" in activated.stderr
    assert redis_server.cli("GET", f"{prefix}mode:acme") == "setup"

    edge.new.statuses.clear()  # the missing page is added
    checked = run_cli("tenant", "readiness", "acme", *cli)
    assert checked.returncode == 0
    assert "100.0% of 10 recorded requests (3 paths) resolve on the new portal: ready" in (
        checked.stdout
    )
    activated = run_cli("tenant", "set", "acme", "active", *cli)
    assert activated.returncode == 0, activated.stderr
    assert "setup → active" in activated.stdout
    assert "\n  acme: 100.0% of 10 recorded requests" in activated.stdout
    assert redis_server.cli("GET", f"{prefix}mode:acme") == "active"
    probes = [seen for seen in edge.new.seen if seen.header("user-agent") == USER_AGENT]
    assert probes and all(seen.method == "GET" for seen in probes)


def test_the_dashboard_shows_readiness_and_activates_below_it_only_with_force(
    lacking: tuple[Stack, Path], redis_server: RedisServer, prefix: str
) -> None:
    edge, _ = lacking
    with log_in(edge) as client:
        page = client.get("/tenants/acme/readiness")
        assert page.status_code == 200
        assert "acme: 90.0% of 10 recorded requests (3 paths) resolve on the new portal: " in (
            text_of(page)
        )
        assert "1 /acme/invoices /acme/billing/invoices 404" in text_of(page)
        assert 'href="/tenants/acme/readiness"' in client.get("/tenants/acme").text

        confirm = client.get("/tenants/acme/move", params={"to": "active"})
        assert "not ready (activation needs 95%)" in text_of(confirm)
        assert "activating needs force" in text_of(confirm)
        form = {"csrf": csrf_of(confirm), "to": "active", "from": "setup"}
        refused = client.post("/tenants/acme/move", data=form)
        assert refused.status_code == 409
        assert "acme: 90.0% of 10 recorded requests" in text_of(refused)
        assert redis_server.cli("GET", f"{prefix}mode:acme") == "setup"

        forced = client.post("/tenants/acme/move", data={**form, "force": "yes"})
        assert forced.status_code == 303
        assert redis_server.cli("GET", f"{prefix}mode:acme") == "active"
        history = client.get("/tenants/acme")
        assert "dashboard:alice" in text_of(history)


async def test_schedules_and_bulk_moves_go_through_the_same_guard(
    store: ModeStore, new_portal: tuple[RecordingBackend, str]
) -> None:
    _, url = new_portal
    moves = Parts(settings_for(url), store).moves
    await moves.set_mode("acme", Mode.SETUP, actor="ana")

    moved = await moves.move_many(BulkMove([("acme", "active"), ("quiet-gym", "active")], "ana"))
    assert [(result.tenant, result.outcome) for result in moved] == [
        ("acme", MoveOutcome.REFUSED),
        ("quiet-gym", MoveOutcome.MOVED),  # no recorded traffic: coverage unknown, allowed
    ]
    assert "acme: 84.0% of 100 recorded requests" in str(moved[0].refusal)

    # Scheduled by a service whose clock is a minute behind, for an instant already due.
    due = datetime.now(UTC)
    behind = Parts(settings_for(url), store, clock=lambda: due - timedelta(minutes=1)).moves
    await behind.schedule_move("acme", Mode.ACTIVE, due, actor="ana")
    assert await Scheduler(store, moves).run_due() == []  # refused, and dropped with a warning
    assert await store.get("acme") == "setup"

    await behind.schedule_move("acme", Mode.ACTIVE, due, actor="ana", force=True)
    [change] = await Scheduler(store, moves).run_due()
    assert (change.mode, change.note) == (Mode.ACTIVE, "forced: readiness not checked")


def test_with_the_embedded_store_the_cli_asks_the_running_edge(tmp_path: Path) -> None:
    with stack("memory://", "edge:", policy={"path_rules": RULES}) as edge:
        edge.new.statuses["/acme/billing/invoices"] = 404
        admin_port = edge.edge.settings.admin.port
        config_file = tmp_path / "edge.toml"
        config_file.write_text(
            cli_config(
                "memory://",
                "edge:",
                legacy="http://127.0.0.1:9",
                new="http://127.0.0.1:9",  # the CLI never probes: the running edge does
                hosts=(LEGACY_HOST, NEW_HOST),
                policy={"path_rules": RULES},
            )
            + f'[admin]\nport = {admin_port}\ntoken = "{ADMIN_TOKEN}"\n'
        )
        cli = ["--config", str(config_file)]
        with edge.client() as client, edge.admin() as admin:
            # Counted once it has a key of its own.
            admin.put("/api/tenants/acme", json={"mode": "setup"}, headers=AUTH).raise_for_status()
            for path in ["/acme/classes", "/acme/invoices"]:
                client.get(path, headers={"Host": LEGACY_HOST})
            eventually(lambda: admin.get("/api/tenants/acme/readiness").json()["requests"] == 2)
        checked = run_cli("tenant", "readiness", "acme", *cli)
        assert checked.returncode == 1
        assert "acme: 50.0% of 2 recorded requests (2 paths) resolve" in checked.stdout
        refused = run_cli("tenant", "set", "acme", "active", *cli)
        assert refused.returncode == 1
        assert "refused: acme: 50.0% of 2 recorded requests" in refused.stderr
        forced = run_cli("tenant", "set", "acme", "active", "--force", *cli)
        assert forced.returncode == 0, forced.stderr
        assert "\n  forced: readiness not checked" in forced.stdout
        watched = run_cli("tenant", "watch", "acme", *cli)
        assert watched.returncode == 0
        assert "too few responses since activation to judge" in watched.stdout
