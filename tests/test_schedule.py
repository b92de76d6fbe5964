"""Scheduled moves: stored, listed, cancelled, and applied once by exactly one instance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from edge.config import StoreSettings
from edge.core.refusals import FORCE_FLAG, ChangeRefused, UnknownSchedule
from edge.core.tenants import Mode
from edge.modes import Change, ModeStore, RedisStore, open_store
from edge.modes.base import Schedule
from edge.moves.schedule import Scheduler, parse_instant, via
from edge.moves.service import Moves
from tests.support.cli import run_cli
from tests.support.redis import RedisServer
from tests.support.settings import ADMIN_TOKEN, settings_for
from tests.support.stack import run_edge
from tests.support.waiting import eventually

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Generous: other test runs share this machine, and a timed-out audit write would leave a
# move for the lease (a minute) to sort out.
STORE_TIMEOUT = 5.0
# How far behind the stores' clocks the move service's clock is: a move it schedules for now
# is in the future to it, and due at once to the store, which judges what is due.
BEHIND = timedelta(hours=1)


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_server: RedisServer, prefix: str
) -> AsyncIterator[ModeStore]:
    url = "memory://" if request.param == "memory" else redis_server.url
    store = open_store(StoreSettings(url=url, prefix=prefix, timeout=STORE_TIMEOUT))
    yield store
    await store.close()


@pytest.fixture
def moves(store: ModeStore) -> Moves:
    earlier = datetime.now(UTC) - BEHIND
    return Moves(store, clock=lambda: earlier)


def soon(seconds: float) -> datetime:
    """In the future for the stores as for the move service."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


def due() -> datetime:
    """Now: in the move service's future, already due to the store."""
    return datetime.now(UTC)


# The contract, on both stores


async def test_a_schedule_is_stored_listed_and_cancelled(store: ModeStore, moves: Moves) -> None:
    at = datetime(2099, 3, 1, 6, 0, tzinfo=UTC)
    later = await moves.schedule_move("acme", Mode.ACTIVE, at, actor="ana")
    sooner = await moves.schedule_move("swim", "setup", at - timedelta(days=1), actor="bo")

    assert await store.schedules() == [sooner, later]
    assert (later.tenant, later.mode, later.at, later.actor, later.force) == (
        "acme",
        Mode.ACTIVE,
        at,
        "ana",
        False,
    )
    assert Schedule.from_json(later.to_json()) == later
    assert await moves.cancel_schedule(later.id) == later
    assert await store.schedules() == [sooner]
    with pytest.raises(UnknownSchedule):
        await moves.cancel_schedule(later.id)
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
    moves: Moves,
    current: str | None,
    pending: str | None,
    target: str,
    force: bool,
    message: str,
) -> None:
    if current:
        await moves.set_mode("acme", current, actor="ana", force=True)
    if pending:
        await moves.schedule_move("acme", pending, soon(3600), actor="ana")
    before = await store.schedules()
    with pytest.raises(ChangeRefused) as refused:
        await moves.schedule_move("acme", target, soon(7200), actor="bo", force=force)
    assert message in refused.value.says(FORCE_FLAG)
    assert await store.schedules() == before


async def test_force_schedules_a_rollback_and_past_or_naive_times_are_refused(
    store: ModeStore, moves: Moves
) -> None:
    await moves.set_mode("acme", Mode.ACTIVE, actor="ana")
    rollback = await moves.schedule_move("acme", "setup", soon(60), actor="bo", force=True)
    assert rollback.force
    with pytest.raises(ChangeRefused, match="is in the past"):
        await moves.schedule_move("acme", "active", moves.clock(), actor="bo")
    with pytest.raises(ChangeRefused, match="needs a UTC offset"):
        await moves.schedule_move("acme", "active", datetime(2099, 1, 1), actor="bo")
    with pytest.raises(ChangeRefused, match="not a tenant id"):
        await moves.schedule_move("Acme", "active", soon(60), actor="bo")
    assert await store.schedules() == [rollback]


async def test_a_due_schedule_is_claimed_by_one_caller_until_its_lease_runs_out(
    store: ModeStore, moves: Moves
) -> None:
    later = await moves.schedule_move("swim", "setup", soon(3600), actor="bo")  # not due yet
    schedule = await moves.schedule_move("acme", "setup", due(), actor="ana")

    assert await store.claim_due(lease=0) == [schedule]
    assert await store.claim_due(lease=3600) == [schedule]  # a lease of 0 ran out: due again
    assert await store.claim_due(lease=3600) == []  # claimed: nobody else gets it
    assert await store.finish_schedule(schedule) is True
    assert await store.finish_schedule(schedule) is False
    assert await store.schedules() == [later]


async def test_the_scheduler_makes_the_move_with_the_recorded_actor_and_force(
    store: ModeStore, moves: Moves
) -> None:
    await moves.set_mode("acme", Mode.ACTIVE, actor="ana")
    rollback = await moves.schedule_move("acme", "setup", due(), actor="bo", force=True)
    forward = await moves.schedule_move("swim", "active", due(), actor="cy")
    later = await moves.schedule_move("swim", "legacy", soon(3600), actor="cy", force=True)

    applied = await Scheduler(store, moves).run_due()
    assert sorted(change.tenant for change in applied) == ["acme", "swim"]
    assert await store.get_many(["acme", "swim"]) == ["setup", "active"]
    acme = (await store.history("acme"))[0]
    assert (acme.actor, acme.forced, acme.via) == ("bo", True, via(rollback))
    swim = await store.history("swim")
    assert [(c.actor, c.via) for c in swim] == [("cy", via(forward))]
    assert await store.schedules() == [later]


async def test_a_move_refused_when_due_is_dropped_and_changes_nothing(
    store: ModeStore, moves: Moves
) -> None:
    await moves.schedule_move("acme", "setup", due(), actor="ana")
    await moves.set_mode("acme", Mode.ACTIVE, actor="bo")  # moved on meanwhile

    assert await Scheduler(store, moves).run_due() == []
    assert await store.schedules() == []
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
    earlier = datetime.now(UTC) - BEHIND
    moves = [Moves(store, clock=lambda: earlier) for store in stores]
    at = due()
    for tenant in tenants:
        await moves[0].schedule_move(tenant, "active", at, actor="ops")
    schedulers = [Scheduler(store, mover) for store, mover in zip(stores, moves, strict=True)]
    applied: list[Change] = []

    try:
        for changes in await asyncio.gather(*(s.run_due() for s in schedulers)):
            applied.extend(changes)
        assert await stores[0].schedules() == []
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
    earlier = datetime.now(UTC) - BEHIND
    moves = Moves(store, clock=lambda: earlier)
    try:
        before = await moves.schedule_move("acme", "setup", due(), actor="ana")
        after = await moves.schedule_move("swim", "active", due(), actor="bo")
        # Both claimed by a claimant that then died; a lease of 0 has run out at once.
        assert len(await store.claim_due(lease=0)) == 2
        # It died before one move, and after the other but before finishing it.
        await moves.set_mode("swim", "active", actor="bo", via=via(after))
        await moves.set_mode("swim", "setup", actor="dee", force=True)  # then ops rolled back

        await Scheduler(store, moves).run_due()
        assert await store.schedules() == []
        assert [(c.actor, c.via) for c in await store.history("acme")] == [("ana", via(before))]
        assert await store.get("swim") == "setup"
        assert [c.actor for c in await store.history("swim")] == ["dee", "bo"]
    finally:
        await store.close()


@pytest.fixture
def two_instances(redis_server: RedisServer, prefix: str) -> Iterator[list[str]]:
    """Two edges on one Redis, each with its own store and scheduler, and a move service whose
    clock is BEHIND: their admin URLs."""
    raw = settings_for(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        redis_server.url,
        prefix,
        store={"timeout": STORE_TIMEOUT},
    )
    earlier = datetime.now(UTC) - BEHIND
    with ExitStack() as running:
        yield [running.enter_context(run_edge(raw, clock=lambda: earlier))[2] for _ in range(2)]


def test_two_edges_make_a_scheduled_move_once(two_instances: list[str]) -> None:
    first, second = (httpx.Client(base_url=url, timeout=10) for url in two_instances)
    tenants = [f"studio-{n}" for n in range(20)]
    at = due().isoformat()
    for tenant in tenants:
        planned = first.post(
            f"/api/tenants/{tenant}/schedule", json={"mode": "active", "at": at}, headers=AUTH
        )
        assert planned.status_code == 201
    assert len(second.get("/api/schedules").json()["schedules"]) == 20

    # Each edge's scheduler looks for due moves every second.
    eventually(lambda: not second.get("/api/schedules").json()["schedules"], within=20)
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


def test_the_cli_schedules_lists_and_cancels(
    config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    c = ("--config", str(config_file))
    planned = run_cli(
        "tenant", "schedule", "acme", "active", "--at", "2099-01-01T06:00Z", "--actor", "gil", *c
    )
    assert planned.returncode == 0, planned.stderr
    assert "acme → active" in planned.stdout and "by gil" in planned.stdout
    run_cli("tenant", "schedule", "swim", "setup", "--at", "2099-01-02T06:00Z", *c)

    listed = run_cli("tenant", "schedules", *c)
    assert [line.split()[2] for line in listed.stdout.splitlines()] == ["acme", "swim"]
    only = run_cli("tenant", "schedules", "--tenant", "swim", *c)
    assert len(only.stdout.splitlines()) == 1

    refused = run_cli("tenant", "schedule", "acme", "setup", "--at", "2099-02-01T00:00Z", *c)
    assert refused.returncode == 1 and "will be active by then" in refused.stderr
    past = run_cli("tenant", "schedule", "acme", "setup", "--at", "2000-01-01T00:00Z", *c)
    assert past.returncode == 1 and "in the past" in past.stderr
    naive = run_cli("tenant", "schedule", "acme", "setup", "--at", "2099-01-01 06:00", *c)
    assert naive.returncode == 1 and "UTC offset" in naive.stderr

    cancelled = run_cli("tenant", "unschedule", "acme", *c)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    swim_id = only.stdout.split()[0]
    assert run_cli("tenant", "unschedule", "--id", swim_id, *c).returncode == 0
    nothing = run_cli("tenant", "unschedule", "acme", *c)
    assert nothing.returncode == 1 and "no scheduled moves" in nothing.stderr
    assert run_cli("tenant", "unschedule", "--id", swim_id, *c).returncode == 1
    assert redis_server.cli("ZCARD", f"{prefix}schedules") == "0"
    assert redis_server.cli("EXISTS", f"{prefix}mode:acme") == "0"
