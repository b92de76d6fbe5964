"""The Redis store on a Redis Cluster: reads split per slot, a scan over every primary, and a
subscription on each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from edge.modes.base import OnSubscribed, StoreNotice, StoreUnavailable
from edge.modes.redis import NODE_CURSORS, RedisStore
from edge.modes.subscription import Subscription, merged, resp2

# Seconds between two looks at a Cluster's primaries, and while one of them cannot be reached.
NODES_CHECK = 5.0
NODES_RECHECK = 1.0

log = logging.getLogger("edge.modes")


class RedisClusterStore(RedisStore):
    """The same keys on a Redis Cluster: a tenant's mode and history keys hash to different
    slots, so multi-key reads are split per slot and every primary is scanned.

    Each primary reports the writes to its own keys only, so every primary gets a subscription
    of its own; a classic PUBLISH reaches every node over the cluster bus, so each also hears
    edge's events (once per primary: forgetting a tenant twice does no harm). A primary that
    cannot be reached is left out until it answers again or the primaries change (a replica
    promoted), which is checked every few seconds: then the subscriptions are all made anew,
    and the cache reads again what it holds.
    """

    _client: RedisCluster

    async def events(self, on_subscribed: OnSubscribed | None = None) -> AsyncIterator[StoreNotice]:
        primaries = await self._primaries(refresh=True)
        opened = await asyncio.gather(
            *(self._subscribe(self._node_connection(node)) for node in primaries),
            return_exceptions=True,
        )
        subscriptions = [s for s in opened if isinstance(s, Subscription)]
        missing = [
            node for node, s in zip(primaries, opened, strict=True) if s not in subscriptions
        ]
        try:
            for failure in opened:
                if isinstance(failure, BaseException) and not isinstance(failure, Exception):
                    raise failure  # cancelled
            if not subscriptions:
                raise next(f for f in opened if isinstance(f, StoreUnavailable))
            for node in missing:
                log.warning("mode notices: Redis node %s cannot be reached for now", node.name)
            if on_subscribed is not None:
                await on_subscribed(all(s.tracked for s in subscriptions))
            watch = self._nodes_changed({node.name for node in primaries}, missing)
            notices = merged([s.notices() for s in subscriptions], watch)
            async for notice in self._until_closed(notices):
                yield notice
        finally:
            for subscription in subscriptions:
                await self._unsubscribe(subscription)

    def _node_connection(self, node: ClusterNode) -> AbstractConnection:
        return resp2(node.connection_class, node.connection_kwargs)

    async def _nodes_changed(self, names: set[str], missing: list[ClusterNode]) -> None:
        """Returns once the primaries are others than ``names``, or a missing one answers."""
        while True:
            await asyncio.sleep(NODES_RECHECK if missing else NODES_CHECK)
            with suppress(StoreUnavailable):  # a cluster that is down fails the subscriptions
                primaries = await self._primaries(refresh=True)
                if {node.name for node in primaries} != names:
                    return
                for node in missing:
                    if await self._answers(node):
                        return

    async def _answers(self, node: ClusterNode) -> bool:
        connection = self._node_connection(node)
        try:
            async with asyncio.timeout(self._timeout):
                await connection.connect()  # type: ignore[no-untyped-call]
                await connection.send_command("PING")
                await connection.read_response()
            return True
        except (RedisError, OSError, TimeoutError):
            return False
        finally:
            with suppress(RedisError, OSError):
                await connection.disconnect(nowait=True)

    async def _mget(self, keys: list[str]) -> list[str | None]:
        values: list[str | None] = await self._client.mget_nonatomic(keys)
        return values

    async def _scan_once(self, position: int, pattern: str, count: int) -> tuple[int, list[str]]:
        # A position is the primary's place in name order and that primary's own cursor.
        primaries = await self._primaries()
        index, cursor = divmod(position, NODE_CURSORS)
        if index >= len(primaries):
            raise ValueError(f"{position} is not a cursor of this store")
        node = primaries[index]
        cursors, keys = await self._call(
            "SCAN", self._client.scan(cursor, match=pattern, count=count, target_nodes=node)
        )
        index, cursor = (index, cursors[node.name]) if cursors[node.name] else (index + 1, 0)
        return (0 if index == len(primaries) else index * NODE_CURSORS + cursor), keys

    def _cursor_bound(self) -> int:
        return NODE_CURSORS * 1000  # Redis Cluster's ceiling: 1000 nodes

    async def _primaries(self, *, refresh: bool = False) -> list[ClusterNode]:
        """The primaries, by name; ``refresh`` asks the cluster rather than the client's map."""
        initialize = self._client.nodes_manager.initialize if refresh else self._client.initialize
        await self._call("CLUSTER SLOTS", initialize())
        return sorted(self._client.get_primaries(), key=lambda node: node.name)

    def _node_of(self, key: str) -> dict[str, Any]:
        return {"target_nodes": self._key_node(key)}

    def _key_node(self, key: str) -> ClusterNode:
        node = self._client.get_node_from_key(key)
        if node is None:
            raise StoreUnavailable(f"no Redis Cluster node holds the slot of {key}")
        return node

    async def _publish(self, payload: str, tenant: str) -> None:
        node = self._key_node(self._mode_key(tenant))
        await self._client.publish(self._channel, payload, target_nodes=node)
