"""One contract, two stores: the embedded memory store and Redis (a real redis-server)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from edge.config import StoreSettings
from edge.core.refusals import ChangeRefused
from edge.core.tenants import Mode
from edge.modes import Change, ModeEvent, ModeStore, open_store
from edge.modes.base import KeysChanged, StoreNotice
from edge.modes.memory import MemoryStore
from edge.moves.service import Moves
from tests.support.redis import RedisServer

RawSet = Callable[[str, str | None], None]


@pytest.fixture
def raw_set(store: ModeStore, redis_server: RedisServer, prefix: str) -> RawSet:
    """Edit a value behind edge's back, as ops would with redis-cli (None deletes)."""

    def edit(tenant: str, value: str | None) -> None:
        if isinstance(store, MemoryStore):
            store.set_raw(tenant, value)
        elif value is None:
            redis_server.cli("DEL", f"{prefix}mode:{tenant}")
        else:
            redis_server.cli("SET", f"{prefix}mode:{tenant}", value)

    return edit


async def test_missing_key_reads_as_none(store: ModeStore) -> None:
    assert await store.get("acme-gym") is None
    assert await store.get_many([]) == []
    assert await store.modes() == {}
    assert await store.history("acme-gym") == []


async def test_forward_moves_are_stored_and_audited(store: ModeStore) -> None:
    before = datetime.now(UTC)
    to_setup = await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana", via="api")
    to_active = await Moves(store).set_mode("acme-gym", "active", actor="bo")

    assert await store.get("acme-gym") == "active"
    assert (to_setup.previous, to_setup.mode, to_setup.changed) == (None, Mode.SETUP, True)
    assert (to_active.previous, to_active.mode, to_active.forced) == ("setup", Mode.ACTIVE, False)
    assert (to_setup.actor, to_setup.via, to_active.via) == ("ana", "api", "cli")
    assert before <= to_setup.at <= to_active.at <= datetime.now(UTC)
    assert await store.history("acme-gym") == [to_active, to_setup]


async def test_skipping_setup_is_a_forward_move(store: ModeStore) -> None:
    change = await Moves(store).set_mode("acme-gym", Mode.ACTIVE, actor="ana")
    assert change.changed and change.previous is None


@pytest.mark.parametrize(
    ("start", "back"), [("setup", "legacy"), ("active", "setup"), ("active", "legacy")]
)
async def test_backward_move_needs_force(
    store: ModeStore, raw_set: RawSet, start: str, back: str
) -> None:
    await Moves(store).set_mode("acme-gym", start, actor="ana")
    history = await store.history("acme-gym")

    with pytest.raises(ChangeRefused, match=f"acme-gym is {start}; moving back to {back}.*force"):
        await Moves(store).set_mode("acme-gym", back, actor="bo")

    assert await store.get("acme-gym") == start
    assert await store.history("acme-gym") == history

    forced = await Moves(store).set_mode("acme-gym", back, actor="bo", force=True)
    assert (forced.previous, forced.mode.value, forced.forced) == (start, back, True)
    assert await store.get("acme-gym") == back
    assert (await store.history("acme-gym"))[0] == forced


async def test_force_on_a_forward_move_is_not_recorded_as_forced(store: ModeStore) -> None:
    change = await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana", force=True)
    assert change.changed and not change.forced


@pytest.mark.parametrize("tenant", ["", "Acme", "-acme", "acme_gym", "a/b", "x" * 64, "acme gym"])
async def test_bad_tenant_is_refused(store: ModeStore, tenant: str) -> None:
    with pytest.raises(ChangeRefused, match="not a tenant id"):
        await Moves(store).set_mode(tenant, Mode.SETUP, actor="ana")
    assert await store.modes() == {}


@pytest.mark.parametrize("mode", ["", "Setup", "retired", "actve"])
async def test_bad_mode_is_refused(store: ModeStore, mode: str) -> None:
    with pytest.raises(ChangeRefused, match="not a mode"):
        await Moves(store).set_mode("acme-gym", mode, actor="ana", force=True)
    assert await store.modes() == {}


async def test_same_mode_again_changes_nothing(store: ModeStore) -> None:
    first = await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana")
    again = await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="bo", force=True)
    legacy = await Moves(store).set_mode("other-gym", Mode.LEGACY, actor="bo")

    assert (again.changed, again.previous, again.mode) == (False, "setup", Mode.SETUP)
    assert (legacy.changed, legacy.previous) == (False, None)
    assert await store.history("acme-gym") == [first]
    assert await store.history("other-gym") == []
    assert await store.modes() == {"acme-gym": "setup"}


async def test_an_invalid_value_is_repaired_without_force(
    store: ModeStore, raw_set: RawSet
) -> None:
    raw_set("acme-gym", "actve")
    change = await Moves(store).set_mode("acme-gym", Mode.LEGACY, actor="ana")
    assert (change.changed, change.previous, change.forced) == (True, "actve", False)
    assert await store.get("acme-gym") == "legacy"
    assert (await store.history("acme-gym"))[0].previous == "actve"


async def test_raw_values_are_read_as_stored(store: ModeStore, raw_set: RawSet) -> None:
    raw_set("acme-gym", "setup")
    raw_set("bad-gym", "ACTIVE")
    raw_set("gone-gym", "active")
    raw_set("gone-gym", None)

    assert await store.get("bad-gym") == "ACTIVE"
    assert await store.get_many(["acme-gym", "gone-gym", "bad-gym"]) == ["setup", None, "ACTIVE"]
    assert await store.modes() == {"acme-gym": "setup", "bad-gym": "ACTIVE"}


async def test_modes_lists_every_tenant_with_a_key(store: ModeStore) -> None:
    tenants = [f"gym-{n}" for n in range(1200)]
    for tenant in tenants[::2]:
        await Moves(store).set_mode(tenant, Mode.SETUP, actor="ana")

    assert await store.modes() == {tenant: "setup" for tenant in tenants[::2]}
    values = await store.get_many(tenants)
    assert values == ["setup" if n % 2 == 0 else None for n in range(1200)]


async def _all_pages(store: ModeStore, **filters: Any) -> list[list[tuple[str, str]]]:
    pages, cursor = [], ""
    while True:
        page = await store.page(cursor, **filters)
        pages.append(page.tenants)
        if page.cursor is None:
            return pages
        cursor = page.cursor


async def test_pages_walk_every_tenant_with_a_key(store: ModeStore) -> None:
    modes = [Mode.SETUP, Mode.ACTIVE]
    for n in range(300):
        await Moves(store).set_mode(f"gym-{n}", modes[n % 2], actor="ana")

    pages = await _all_pages(store, limit=40)

    # SCAN may repeat a key while Redis rehashes; it never leaves one out.
    assert dict(row for page in pages for row in page) == await store.modes()
    assert len(pages) >= 300 // 60


async def test_pages_filter_by_substring_and_mode(store: ModeStore, raw_set: RawSet) -> None:
    for n in range(2000):
        await Moves(store).set_mode(f"gym-{n}", Mode.SETUP, actor="ana")
    await Moves(store).set_mode("swim-north", Mode.ACTIVE, actor="ana")
    await Moves(store).set_mode("swim-south", Mode.SETUP, actor="ana")
    raw_set("swim-east", "ACTIVE")

    def found(pages: list[list[tuple[str, str]]]) -> dict[str, str]:
        return dict(row for page in pages for row in page)

    assert found(await _all_pages(store, contains="swim", limit=10)) == {
        "swim-north": "active",
        "swim-south": "setup",
        "swim-east": "ACTIVE",
    }
    assert found(await _all_pages(store, mode="active", limit=10)) == {"swim-north": "active"}
    assert found(await _all_pages(store, contains="swim", mode="setup")) == {"swim-south": "setup"}
    assert found(await _all_pages(store, contains="*")) == {}


@pytest.mark.parametrize("cursor", ["no pe", "-1", "1.5", "²", "Acme"])
async def test_a_cursor_the_store_never_gave_is_refused(store: ModeStore, cursor: str) -> None:
    with pytest.raises(ValueError, match="is not a cursor"):
        await store.page(cursor)


async def test_a_cursor_beyond_what_redis_scans_is_refused_not_sent(
    redis_server: RedisServer, prefix: str
) -> None:
    store = open_store(StoreSettings(url=redis_server.url, prefix=prefix))
    with pytest.raises(ValueError, match="is not a cursor"):
        await store.page(str(2**64))
    await store.close()


async def test_history_is_newest_first_limited_and_capped(store: ModeStore) -> None:
    modes = [Mode.SETUP, Mode.ACTIVE, Mode.LEGACY]
    for n in range(1002):
        await Moves(store).set_mode("acme-gym", modes[n % 3], actor=f"op-{n}", force=True)

    history = await store.history("acme-gym", limit=5000)
    assert len(history) == 1000
    assert history[0].actor == "op-1001" and history[-1].actor == "op-2"
    assert [change.actor for change in await store.history("acme-gym", limit=3)] == [
        "op-1001",
        "op-1000",
        "op-999",
    ]
    assert len(await store.history("acme-gym")) == 100
    assert await store.history("acme-gym", limit=0) == []
    _assert_chain(history)


async def test_history_entries_round_trip_as_json(store: ModeStore) -> None:
    change = await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana", via="api")
    entry = change.to_json()
    assert entry == {
        "tenant": "acme-gym",
        "actor": "ana",
        "at": change.at.isoformat(),
        "from": None,
        "to": "setup",
        "forced": False,
        "via": "api",
        "changed": True,
    }
    assert Change.from_json(entry) == change
    again = await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana")
    assert Change.from_json(again.to_json()) == again
    assert change.at.tzinfo is not None and change.at.utcoffset() == UTC.utcoffset(None)


async def test_changes_are_announced(store: ModeStore) -> None:
    notices, listener = await _listen(store)
    try:
        await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana")
        await Moves(store).set_mode("acme-gym", Mode.SETUP, actor="ana")  # no change, no event
        await Moves(store).set_mode("acme-gym", Mode.LEGACY, actor="ana", force=True)
        await Moves(store).set_mode("other-gym", Mode.ACTIVE, actor="ana")
        received = [await _next(notices, ModeEvent) for _ in range(3)]
        assert received == [
            ModeEvent("acme-gym", Mode.SETUP),
            ModeEvent("acme-gym", Mode.LEGACY),
            ModeEvent("other-gym", Mode.ACTIVE),
        ]
    finally:
        listener.cancel()


async def test_every_write_to_a_mode_key_is_reported(store: ModeStore, raw_set: RawSet) -> None:
    notices, listener = await _listen(store)
    try:
        raw_set("acme-gym", "active")  # behind edge's back: no event, but Redis tells
        assert await _next(notices, KeysChanged) == KeysChanged(("acme-gym",))
        raw_set("acme-gym", None)
        assert await _next(notices, KeysChanged) == KeysChanged(("acme-gym",))
        await Moves(store).set_mode("other-gym", Mode.SETUP, actor="ana")
        assert await _next(notices, KeysChanged) == KeysChanged(("other-gym",))
        await Moves(store).set_mode("other-gym", Mode.SETUP, actor="ana")  # no write, no notice
        raw_set("last-gym", "setup")
        assert await _next(notices, KeysChanged) == KeysChanged(("last-gym",))
    finally:
        listener.cancel()


async def test_closing_the_store_ends_the_event_stream(store: ModeStore) -> None:
    _, listener = await _listen(store)
    await store.close()
    await asyncio.wait_for(listener, 5)


async def test_concurrent_changes_never_interleave(store: ModeStore) -> None:
    rng = random.Random(7)
    moves = Moves(store)  # one process: its moves of a tenant are ordered
    for round_ in range(20):
        tenant = f"race-{round_}"
        targets = [rng.choice(list(Mode)) for _ in range(8)]
        forces = [rng.random() < 0.3 for _ in targets]
        results = await asyncio.gather(
            *(
                moves.set_mode(tenant, target, actor=f"op-{n}", force=force)
                for n, (target, force) in enumerate(zip(targets, forces, strict=True))
            ),
            return_exceptions=True,
        )
        changes = [r for r in results if isinstance(r, Change) and r.changed]
        assert all(isinstance(r, Change | ChangeRefused) for r in results)
        history = await store.history(tenant)

        assert sorted(history, key=lambda c: c.actor) == sorted(changes, key=lambda c: c.actor)
        _assert_chain(history)
        assert not history or history[-1].previous is None
        final = history[0].mode.value if history else None
        assert await store.get(tenant) == final


def _assert_chain(history: list[Change]) -> None:
    """Newest first: each change starts where the one before it ended."""
    for newer, older in itertools.pairwise(history):
        assert newer.previous == older.mode.value


async def _listen(
    store: ModeStore,
) -> tuple[asyncio.Queue[StoreNotice], asyncio.Task[None]]:
    """Every notice of the store, from a subscription that tracks writes."""
    notices: asyncio.Queue[StoreNotice] = asyncio.Queue()
    subscribed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def on_subscribed(tracked: bool) -> None:
        subscribed.set_result(tracked)

    async def run() -> None:
        async for notice in store.events(on_subscribed):
            notices.put_nowait(notice)

    listener = asyncio.create_task(run())
    assert await asyncio.wait_for(subscribed, 5) is True
    return notices, listener


Notice = TypeVar("Notice", ModeEvent, KeysChanged)


async def _next(notices: asyncio.Queue[StoreNotice], kind: type[Notice]) -> Notice:
    """The next notice of that kind, skipping the others."""
    while not isinstance(notice := await asyncio.wait_for(notices.get(), 5), kind):
        pass
    return notice
