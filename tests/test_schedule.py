"""Scheduled moves: stored, listed, cancelled, and applied once by exactly one instance."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from edge.config import StoreSettings
from edge.core.tenants import Mode
from edge.modes import Change, ChangeRefused, ModeStore, RedisStore, open_store
from edge.modes.base import Schedule, UnknownSchedule
from edge.moves.schedule import Scheduler, parse_instant, via
from tests.stack import ADMIN_TOKEN, run_edge, settings_for
from tests.support import RedisServer
from tests.test_cli import CONFIG, edge

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Generous: other test runs share this machine, and a timed-out audit write would leave a
# move for the lease (a minute) to sort out.
STORE_TIMEOUT = 5.0


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_server: RedisServer, prefix: str
) -> AsyncIterator[ModeStore]:
    url = "memory://" if request.param == "memory" else redis_server.url
    store = open_store(StoreSettings(url=url, prefix=prefix, timeout=STORE_TIMEOUT))
    yield store
    await store.close()


def soon(seconds: float = 0.3) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll an async predicate until it holds, within a generous bound (machines are noisy)."""
    deadline = time.monotonic() + 15
    while not await check():
        assert time.monotonic() < deadline, "not true within 15 s"
        await asyncio.sleep(0.05)


# The contract, on both stores


async def test_a_schedule_is_stored_listed_and_cancelled(store: ModeStore) -> None:
    at = datetime(2099, 3, 1, 6, 0, tzinfo=UTC)
    later = await store.schedule_move("acme", Mode.ACTIVE, at, actor="ana")
    sooner = await store.schedule_move("swim", "setup", at - timedelta(days=1), actor="bo")

    assert await store.schedules() == [sooner, later]
    assert (later.tenant, later.mode, later.at, later.actor, later.force) == (
        "acme",
        Mode.ACTIVE,
        at,
        "ana",
        False,
    )
    assert Schedule.from_json(later.to_json()) == later
    assert await store.cancel_schedule(later.id) == later
    assert await store.schedules() == [sooner]
    with pytest.raises(UnknownSchedule):
        await store.cancel_schedule(later.id)
    assert await store.get("acme") is None


@pytest.mark.parametrize(
    ("current", "pending", "target", "force", "message"),
    [
        ("setup", None, "legacy", False, "acme is setup; moving back to legacy needs --force"),
        ("active", None, "active", True, "acme is active already"),
        (None, "active", "setup", False, "will be active by then"),
        (None, "setup", "setup", True, "will be setup by then (schedule"),
        (None, None, "live", False, "'live' is not a mode"),
    ],
)
async def test_a_move_that_could_not_be_made_then_is_refused_now(
    store: ModeStore,
    current: str | None,
    pending: str | None,
    target: str,
    force: bool,
    message: str,
) -> None:
    if current:
        await store.set_mode("acme", current, actor="ana", force=True)
    if pending:
        await store.schedule_move("acme", pending, soon(3600), actor="ana")
    before = await store.schedules()
    with pytest.raises(ChangeRefused, match=message.replace("(", r"\(")):
        await store.schedule_move("acme", target, soon(7200), actor="bo", force=force)
    assert await store.schedules() == before


async def test_force_schedules_a_rollback_and_past_or_naive_times_are_refused(
    store: ModeStore,
) -> None:
    await store.set_mode("acme", Mode.ACTIVE, actor="ana")
    rollback = await store.schedule_move("acme", "setup", soon(60), actor="bo", force=True)
    assert rollback.force
    with pytest.raises(ChangeRefused, match="is in the past"):
        await store.schedule_move(
            "acme", "active", datetime.now(UTC) - timedelta(seconds=1), actor="bo"
        )
    with pytest.raises(ChangeRefused, match="needs a UTC offset"):
        await store.schedule_move("acme", "active", datetime(2099, 1, 1), actor="bo")
    with pytest.raises(ChangeRefused, match="not a tenant id"):
        await store.schedule_move("Acme", "active", soon(60), actor="bo")
    assert await store.schedules() == [rollback]


async def test_a_due_schedule_is_claimed_by_one_caller_until_its_lease_runs_out(
    store: ModeStore,
) -> None:
    schedule = await store.schedule_move("acme", "setup", soon(0.2), actor="ana")
    assert await store.claim_due(lease=0.5) == []  # not due yet

    async def claimed() -> bool:
        return await store.claim_due(lease=0.5) == [schedule]

    await eventually(claimed)
    assert await store.claim_due(lease=0.5) == []  # claimed: nobody else gets it
    await eventually(claimed)  # the lease ran out: due again
    assert await store.finish_schedule(schedule) is True
    assert await store.finish_schedule(schedule) is False
    assert await store.schedules() == []


async def test_the_scheduler_makes_the_move_with_the_recorded_actor_and_force(
    store: ModeStore,
) -> None:
    await store.set_mode("acme", Mode.ACTIVE, actor="ana")
    rollback = await store.schedule_move("acme", "setup", soon(), actor="bo", force=True)
    forward = await store.schedule_move("swim", "active", soon(), actor="cy")
    scheduler = Scheduler(store)
    applied: list[Change] = []

    async def all_applied() -> bool:
        applied.extend(await scheduler.run_due())
        return len(applied) == 2

    await eventually(all_applied)
    assert await store.get_many(["acme", "swim"]) == ["setup", "active"]
    acme = (await store.history("acme"))[0]
    assert (acme.actor, acme.forced, acme.via) == ("bo", True, via(rollback))
    swim = await store.history("swim")
    assert [(c.actor, c.via) for c in swim] == [("cy", via(forward))]
    assert await store.schedules() == []


async def test_a_move_refused_when_due_is_dropped_and_changes_nothing(store: ModeStore) -> None:
    await store.schedule_move("acme", "setup", soon(), actor="ana")
    await store.set_mode("acme", Mode.ACTIVE, actor="bo")  # moved on meanwhile
    scheduler = Scheduler(store)

    async def gone() -> bool:
        assert await scheduler.run_due() == []
        return await store.schedules() == []

    await eventually(gone)
    assert await store.get("acme") == "active"
    assert [c.actor for c in await store.history("acme")] == ["bo"]


# Several instances on one Redis


async def test_many_schedulers_on_one_redis_make_each_move_exactly_once(
    redis_server: RedisServer, prefix: str
) -> None:
    stores = [
        RedisStore.from_url(redis_server.url, prefix=prefix, timeout=STORE_TIMEOUT)
        for _ in range(4)
    ]
    tenants = [f"gym-{n}" for n in range(40)]
    # Far enough ahead that scheduling all 40 on a busy machine still lands before it.
    due = soon(3)
    for tenant in tenants:
        await stores[0].schedule_move(tenant, "active", due, actor="ops")
    schedulers = [Scheduler(store) for store in stores]
    applied: list[Change] = []

    async def all_applied() -> bool:
        for changes in await asyncio.gather(*(s.run_due() for s in schedulers)):
            applied.extend(changes)
        return await stores[0].schedules() == []

    try:
        await eventually(all_applied)
        assert sorted(change.tenant for change in applied) == sorted(tenants)
        for tenant in tenants:
            assert len(await stores[0].history(tenant)) == 1
    finally:
        for store in stores:
            await store.close()


async def test_a_claimant_that_died_is_replaced_and_never_moves_twice(
    redis_server: RedisServer, prefix: str
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=prefix, timeout=STORE_TIMEOUT)
    try:
        before = await store.schedule_move("acme", "setup", soon(), actor="ana")
        after = await store.schedule_move("swim", "active", soon(), actor="bo")

        async def both_claimed() -> bool:
            return len(await store.claim_due(lease=0.5)) == 2

        await eventually(both_claimed)
        # One claimant died before its move, the other after its move but before finishing.
        await store.set_mode("swim", "active", actor="bo", via=via(after))
        await store.set_mode("swim", "setup", actor="dee", force=True)  # then ops rolled back
        scheduler = Scheduler(store)

        async def finished() -> bool:
            await scheduler.run_due()
            return await store.schedules() == []

        await eventually(finished)
        assert [(c.actor, c.via) for c in await store.history("acme")] == [("ana", via(before))]
        assert await store.get("swim") == "setup"
        assert [c.actor for c in await store.history("swim")] == ["dee", "bo"]
    finally:
        await store.close()


@pytest.fixture
def two_instances(redis_server: RedisServer, prefix: str) -> Iterator[list[str]]:
    """Two edges on one Redis, each with its own store and scheduler: their admin URLs."""
    raw = settings_for(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        redis_server.url,
        prefix,
        store={"timeout": STORE_TIMEOUT},
    )
    with ExitStack() as running:
        yield [running.enter_context(run_edge(raw))[2] for _ in range(2)]


def test_two_edges_make_a_scheduled_move_once(two_instances: list[str]) -> None:
    first, second = (httpx.Client(base_url=url, timeout=10) for url in two_instances)
    tenants = [f"studio-{n}" for n in range(20)]
    at = soon(1.5).isoformat()
    for tenant in tenants:
        planned = first.post(
            f"/api/tenants/{tenant}/schedule", json={"mode": "active", "at": at}, headers=AUTH
        )
        assert planned.status_code == 201
    assert len(second.get("/api/schedules").json()["schedules"]) == 20

    deadline = time.monotonic() + 20
    while second.get("/api/schedules").json()["schedules"]:
        assert time.monotonic() < deadline, "the schedules were not applied"
        time.sleep(0.1)
    for tenant in tenants:
        assert second.get(f"/api/tenants/{tenant}").json()["mode"] == "active"
        history = first.get(f"/api/tenants/{tenant}/history").json()["history"]
        assert len(history) == 1 and history[0]["via"].startswith("schedule:")


# Parsing and the CLI


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-03-01T06:00:00Z", datetime(2027, 3, 1, 6, tzinfo=UTC)),
        (" 2027-03-01T07:00+01:00 ", datetime(2027, 3, 1, 6, tzinfo=UTC)),
        ("2027-03-01T06:00:00", None),
        ("2027-03-01", None),
        ("next monday", None),
        ("", None),
    ],
)
def test_instants_need_an_offset(text: str, expected: datetime | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="UTC offset"):
            parse_instant(text)
    else:
        assert parse_instant(text) == expected


@pytest.fixture
def config_file(tmp_path: Path, redis_server: RedisServer, prefix: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(CONFIG.format(url=redis_server.url, prefix=prefix))
    return path


def test_the_cli_schedules_lists_and_cancels(
    config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    c = ("--config", str(config_file))
    planned = edge(
        "tenant", "schedule", "acme", "active", "--at", "2099-01-01T06:00Z", "--actor", "gil", *c
    )
    assert planned.returncode == 0, planned.stderr
    assert "acme → active" in planned.stdout and "by gil" in planned.stdout
    edge("tenant", "schedule", "swim", "setup", "--at", "2099-01-02T06:00Z", *c)

    listed = edge("tenant", "schedules", *c)
    assert [line.split()[2] for line in listed.stdout.splitlines()] == ["acme", "swim"]
    only = edge("tenant", "schedules", "--tenant", "swim", *c)
    assert len(only.stdout.splitlines()) == 1

    refused = edge("tenant", "schedule", "acme", "setup", "--at", "2099-02-01T00:00Z", *c)
    assert refused.returncode == 1 and "will be active by then" in refused.stderr
    past = edge("tenant", "schedule", "acme", "setup", "--at", "2000-01-01T00:00Z", *c)
    assert past.returncode == 1 and "in the past" in past.stderr
    naive = edge("tenant", "schedule", "acme", "setup", "--at", "2099-01-01 06:00", *c)
    assert naive.returncode == 1 and "UTC offset" in naive.stderr

    cancelled = edge("tenant", "unschedule", "acme", *c)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    swim_id = only.stdout.split()[0]
    assert edge("tenant", "unschedule", "--id", swim_id, *c).returncode == 0
    nothing = edge("tenant", "unschedule", "acme", *c)
    assert nothing.returncode == 1 and "no scheduled moves" in nothing.stderr
    assert edge("tenant", "unschedule", "--id", swim_id, *c).returncode == 1
    assert redis_server.cli("ZCARD", f"{prefix}schedules") == "0"
    assert redis_server.cli("EXISTS", f"{prefix}mode:acme") == "0"
