"""The Redis store: plain string keys, one atomic Lua compare-and-set, PUBLISH for events.

One server and Sentinel share RedisStore (a Sentinel-managed client finds the master itself);
RedisClusterStore (redis_cluster.py) adds what a Cluster needs: keys spread over slots,
subscriptions on any node. The Lua scripts are in redis_scripts.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from edge.core.refusals import quoted
from edge.core.tenants import Mode, is_tenant_id
from edge.modes.base import (
    DEFAULT_MODE,
    HISTORY_LIMIT,
    Change,
    ModeStore,
    OnSubscribed,
    Outcome,
    Schedule,
    StoreNotice,
    StoreUnavailable,
    TenantPage,
    backward_from,
    decode_history,
    decode_schedules,
    encode_event,
)
from edge.modes.redis_insight import Insight
from edge.modes.redis_scripts import CLAIM_DUE, COMPARE_AND_SET
from edge.modes.subscription import Subscription, resp2
from edge.modes.traffic import KEEP_SLACK, RETENTION_SECONDS, ParityCounts, TrafficCounts

CHUNK = 500
NODE_CURSORS = 2**64  # a SCAN cursor is below this
# One page of tenants costs at most this many SCAN calls, each asking for more keys than the
# last while few match, up to SCAN_COUNT_MAX: a rare match still finds its page quickly, and
# no single call holds Redis up for more than a few milliseconds.
PAGE_SCANS = 64
SCAN_COUNT_MAX = 2_000


_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def not_a_string(kind: str) -> str:
    """What a mode key of another Redis type (a hash, a list...) reads as: never a mode."""
    return f"<a Redis {kind}>"


def client_options(timeout: float) -> dict[str, Any]:
    """Redis client settings for a store: decoded replies, the store timeout, no retries.

    No retries: a retried EVALSHA whose first reply was lost would report "no change" for a
    change it made, and a subscription must fail loudly rather than silently reconnect
    after missing events. The pool replaces a connection the server has closed, but only
    with maintenance notifications off: redis-py 8.1 skips that check when they are on
    (by default with RESP3; redis/redis-py#4128, fixed by #4260). Bytes that are not UTF-8
    decode to U+FFFD: such a stored value is an invalid mode, not an exception.
    """
    return {
        "decode_responses": True,
        "encoding_errors": "replace",
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


class RedisStore(ModeStore):
    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "edge:",
        timeout: float = 0.5,
        wait_replicas: int = 0,
    ) -> None:
        super().__init__()
        self._client = client
        self._prefix = prefix
        self._timeout = timeout
        self._wait_replicas = wait_replicas
        self._channel = f"{prefix}events"
        self._activated_key = f"{prefix}activated"
        self._closed = False
        self._subscriptions: set[Subscription] = set()
        self._claim_due_script = client.register_script(CLAIM_DUE)
        self._schedules_key = f"{prefix}schedules"

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "edge:", timeout: float = 0.5) -> Self:
        """A store on ``redis://``, ``rediss://`` or ``unix://``."""
        return cls(Redis.from_url(url, **client_options(timeout)), prefix=prefix, timeout=timeout)

    def _mode_key(self, tenant: str) -> str:
        return f"{self._prefix}mode:{tenant}"

    def _mode_pattern(self, tenant_glob: str) -> str:
        """A SCAN pattern for mode keys: the prefix escaped, ``tenant_glob`` as given."""
        return _glob_escape(self._mode_key("")) + tenant_glob

    def _history_key(self, tenant: str) -> str:
        return f"{self._prefix}history:{tenant}"

    def _deep_links_key(self, tenant: str) -> str:
        return f"{self._prefix}deeplinks:{tenant}"

    def _responses_key(self, tenant: str, phase: str) -> str:
        return f"{self._prefix}responses:{tenant}:{phase}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            raise StoreUnavailable(f"redis {what} failed: {detail}") from exc

    async def _call(self, what: str, operation: Awaitable[Any]) -> Any:
        """Await one Redis operation within the store timeout; failures → StoreUnavailable."""
        with self._errors(what):
            async with asyncio.timeout(self._timeout):
                return await operation

    async def get(self, tenant: str) -> str | None:
        value: str | None = await self._call("GET", self._get(self._mode_key(tenant)))
        return value

    async def _get(self, key: str) -> str | None:
        try:
            value: Any = await self._client.get(key)
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            return not_a_string(str(await self._client.type(key)))
        return str(value) if value is not None else None

    async def get_many(self, tenants: Sequence[str]) -> list[str | None]:
        values: list[str | None] = []
        for start in range(0, len(tenants), CHUNK):
            keys = [self._mode_key(tenant) for tenant in tenants[start : start + CHUNK]]
            values.extend(await self._call("MGET", self._get_many(keys)))
        return values

    async def _get_many(self, keys: list[str]) -> list[str | None]:
        """MGET, which reads a key of another type as missing: such keys are told apart."""
        values = await self._mget(keys)
        nils = [keys[index] for index, value in enumerate(values) if value is None]
        if nils and await self._client.exists(*nils):  # rare: one is there after all
            pipe = self._client.pipeline(transaction=False)
            for key in nils:
                pipe.type(key)
            kinds = dict(zip(nils, await pipe.execute(), strict=True))
            for index, key in enumerate(keys):
                # A string now was SET since the MGET: missing still, and its notice follows.
                if values[index] is None and kinds[key] not in ("none", "string"):
                    values[index] = not_a_string(str(kinds[key]))
        return values

    async def _mget(self, keys: list[str]) -> list[str | None]:
        values: Any = await self._client.mget(keys)
        return list(values)

    async def history(self, tenant: str, limit: int = 100) -> list[Change]:
        if limit <= 0:
            return []
        entries = await self._call(
            "LRANGE", self._client.lrange(self._history_key(tenant), 0, limit - 1)
        )
        # Two instances' audit writes may land out of order; the Redis time of each swap may not.
        changes = decode_history(tenant, entries)
        return sorted(changes, key=lambda change: change.at, reverse=True)

    async def add_traffic(self, counts: TrafficCounts, keep: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        for tenant, paths in counts.deep_links.items():
            key = self._deep_links_key(tenant)
            for path, count in paths.items():
                pipe.zincrby(key, count, path)
            pipe.zremrangebyrank(key, 0, -keep * KEEP_SLACK - 1)
            pipe.expire(key, RETENTION_SECONDS)
        for tenant, phases in counts.responses.items():
            for phase, classes in phases.items():
                key = self._responses_key(tenant, phase)
                for status_class, count in classes.items():
                    pipe.hincrby(key, status_class, count)
                pipe.expire(key, RETENTION_SECONDS)
        insight = Insight(self._client, self._prefix)
        queued = insight.queue(pipe, counts)
        replies = await self._call("traffic counts", pipe.execute())
        await self._call("traffic counts", insight.settle(counts, queued, replies))

    async def referrers(self, tenant: str, limit: int) -> list[tuple[str, int, datetime]]:
        found: list[tuple[str, int, datetime]] = await self._call(
            "referrers", Insight(self._client, self._prefix).referrers(tenant, limit)
        )
        return found

    async def legacy_hits(self, tenant: str, days: Sequence[str]) -> list[int]:
        hits: list[int] = await self._call(
            "legacy hits", Insight(self._client, self._prefix).legacy_hits(tenant, days)
        )
        return hits

    async def parity(self, tenant: str) -> ParityCounts:
        counts: ParityCounts = await self._call(
            "parity", Insight(self._client, self._prefix).parity(tenant)
        )
        return counts

    async def deep_links(self, tenant: str, limit: int) -> list[tuple[str, int]]:
        links = await self._call(
            "ZREVRANGE",
            self._client.zrevrange(self._deep_links_key(tenant), 0, limit - 1, withscores=True),
        )
        return [(path, int(count)) for path, count in links]

    async def responses(self, tenant: str) -> dict[str, dict[str, int]]:
        phases = (Mode.SETUP.value, Mode.ACTIVE.value)
        pipe = self._client.pipeline(transaction=False)
        for phase in phases:
            pipe.hgetall(self._responses_key(tenant, phase))
        replies = await self._call("HGETALL", pipe.execute())
        return {
            phase: {name: int(count) for name, count in counts.items()}
            for phase, counts in zip(phases, replies, strict=True)
            if counts
        }

    async def activations(self, since: datetime) -> dict[str, datetime]:
        entries = await self._call(
            "ZRANGEBYSCORE",
            self._client.zrangebyscore(
                self._activated_key, since.timestamp(), "+inf", withscores=True
            ),
        )
        return {tenant: datetime.fromtimestamp(at, UTC) for tenant, at in entries}

    async def activated_at(self, tenant: str) -> datetime | None:
        at = await self._call("ZSCORE", self._client.zscore(self._activated_key, tenant))
        return None if at is None else datetime.fromtimestamp(at, UTC)

    async def page(
        self, cursor: str = "", *, contains: str = "", mode: str | None = None, limit: int = 100
    ) -> TenantPage:
        if cursor and not (
            cursor.isascii() and cursor.isdigit() and int(cursor) < self._cursor_bound()
        ):
            raise ValueError(f"{quoted(cursor)} is not a cursor of this store")
        position = int(cursor or 0)
        pattern = self._mode_pattern(f"*{_glob_escape(contains)}*" if contains else "*")
        skip = len(self._mode_key(""))
        count = max(limit, 10)
        found: list[tuple[str, str]] = []
        for _ in range(PAGE_SCANS):
            position, keys = await self._scan_once(position, pattern, count)
            tenants = [key[skip:] for key in keys if is_tenant_id(key[skip:])]
            values = await self.get_many(tenants)
            found.extend(
                (tenant, value)
                for tenant, value in zip(tenants, values, strict=True)
                if value is not None and (mode is None or value == mode)
            )
            if position == 0 or len(found) >= limit:
                break
            if len(found) < limit // 2:
                count = min(count * 4, SCAN_COUNT_MAX)
        return TenantPage(found, str(position) if position else None)

    async def modes(self) -> dict[str, str]:
        pattern = self._mode_pattern("*")
        skip = len(self._mode_key(""))
        found: dict[str, str] = {}
        async for keys in self._scan(pattern):
            tenants = [key[skip:] for key in keys if is_tenant_id(key[skip:])]
            values = await self.get_many(tenants)
            found.update((t, v) for t, v in zip(tenants, values, strict=True) if v is not None)
        return found

    async def _scan(self, pattern: str) -> AsyncIterator[list[str]]:
        """The keys matching ``pattern``, a batch per SCAN call."""
        position = 0
        while True:
            position, keys = await self._scan_once(position, pattern, 1000)
            yield keys
            if position == 0:
                return

    async def _scan_once(self, position: int, pattern: str, count: int) -> tuple[int, list[str]]:
        """One SCAN call from ``position`` (0 to start): the next position (0 at the end)."""
        cursor, keys = await self._call(
            "SCAN", self._client.scan(position, match=pattern, count=count)
        )
        return int(cursor), keys

    def _cursor_bound(self) -> int:
        return NODE_CURSORS

    async def events(self, on_subscribed: OnSubscribed | None = None) -> AsyncIterator[StoreNotice]:
        subscription = await self._subscribe(self._stream_connection())
        try:
            if on_subscribed is not None:
                await on_subscribed(subscription.tracked)
            async for notice in self._until_closed(subscription.notices()):
                yield notice
        finally:
            await self._unsubscribe(subscription)

    def _stream_connection(self) -> AbstractConnection:
        """A connection of its own to the master (Sentinel: as the sentinels name it now)."""
        assert isinstance(self._client, Redis)
        pool = self._client.connection_pool
        return resp2(pool.connection_class, pool.connection_kwargs)

    async def _subscribe(self, connection: AbstractConnection) -> Subscription:
        subscription = Subscription(
            connection, prefix=self._prefix, channel=self._channel, timeout=self._timeout
        )
        self._subscriptions.add(subscription)
        try:
            await subscription.open()
        except BaseException:
            self._subscriptions.discard(subscription)
            raise
        return subscription

    async def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        await subscription.close()

    async def _until_closed(
        self, notices: AsyncIterator[StoreNotice]
    ) -> AsyncIterator[StoreNotice]:
        """The notices; a subscription lost because the store was closed just ends."""
        try:
            async for notice in notices:
                yield notice
        except StoreUnavailable:
            if not self._closed:
                raise

    async def ping(self) -> None:
        await self._call("PING", self._client.ping())

    async def close(self) -> None:
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self._client.aclose()

    async def compare_and_set(
        self, tenant: str, target: Mode, force: bool
    ) -> tuple[Outcome, str | None, datetime]:
        key = self._mode_key(tenant)
        backward = [mode.value for mode in backward_from(target)]
        args = [target.value, "1" if force else "0", DEFAULT_MODE.value, *backward]
        # EVAL, not EVALSHA: one round trip with no NOSCRIPT fallback, in a pipeline that also
        # runs on a Cluster. WAIT must follow on the same connection: it waits for that
        # connection's own writes to reach the replicas.
        wait_ms = max(1, int(self._timeout * 500))  # half the store timeout
        pipe = self._client.pipeline(transaction=False)
        pipe.eval(COMPARE_AND_SET, 1, key, *args)
        if self._wait_replicas:
            pipe.execute_command("WAIT", self._wait_replicas, wait_ms, **self._node_of(key))
        replies = await self._call("EVAL", pipe.execute())
        outcome, previous, seconds, micros = replies[0]
        at = datetime.fromtimestamp(int(seconds), UTC).replace(microsecond=int(micros))
        if outcome == Outcome.CHANGED and self._wait_replicas and replies[1] < self._wait_replicas:
            raise StoreUnavailable(
                f"{tenant} is {target.value} on the Redis master, but only {replies[1]} of "
                f"{self._wait_replicas} replicas confirmed it within {wait_ms} ms, so a "
                "failover could still lose it; it was not audited or announced. "
                f"Check with `edge tenant get {tenant}` once the replicas are back"
            )
        return Outcome(outcome), previous, at

    def _node_of(self, key: str) -> dict[str, Any]:
        """Command options that send a keyless command to the node holding ``key``."""
        return {}

    async def record(self, change: Change) -> None:
        history_key = self._history_key(change.tenant)
        pipe = self._client.pipeline(transaction=False)
        pipe.lpush(history_key, json.dumps(change.to_json()))
        pipe.ltrim(history_key, 0, HISTORY_LIMIT - 1)
        if change.mode is Mode.ACTIVE:  # a fresh watch
            pipe.zadd(self._activated_key, {change.tenant: change.at.timestamp()})
            pipe.delete(self._responses_key(change.tenant, Mode.ACTIVE.value))
        else:
            pipe.zrem(self._activated_key, change.tenant)
        try:
            await self._call("audit", pipe.execute())
            await self._call("PUBLISH", self._publish(encode_event(change), change.tenant))
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"{change.tenant} is now {change.mode.value}, but {exc}: "
                "the audit entry or the event may be missing"
            ) from exc

    async def _publish(self, payload: str, tenant: str) -> None:
        await self._client.publish(self._channel, payload)

    async def schedules(self) -> list[Schedule]:
        encoded = await self._call("ZRANGE", self._client.zrange(self._schedules_key, 0, -1))
        return decode_schedules(encoded)[0]

    async def claim_due(self, lease: float, limit: int = 100) -> list[Schedule]:
        claimed = await self._call(
            "EVALSHA", self._claim_due_script(keys=[self._schedules_key], args=[lease, limit])
        )
        schedules, malformed = decode_schedules(claimed)
        if malformed:  # it can never be applied: drop it rather than claim it forever
            await self._call("ZREM", self._client.zrem(self._schedules_key, *malformed))
        return schedules

    async def finish_schedule(self, schedule: Schedule) -> bool:
        removed = await self._call(
            "ZREM", self._client.zrem(self._schedules_key, schedule.encode())
        )
        return bool(removed)

    async def add_schedule(self, schedule: Schedule) -> None:
        mapping = {schedule.encode(): schedule.at.timestamp()}
        await self._call("ZADD", self._client.zadd(self._schedules_key, mapping))
