"""The transition insight's keys in Redis (edge.modes.traffic): referrers, legacy hits, parity.

Per tenant with a key, each dropped 90 days after its last addition (docs/limits.md):
``{prefix}referrers:{tenant}`` (sorted set, hits) and ``{prefix}referrers-seen:{tenant}``
(hash, last seen), both kept to the most frequent REFERRERS_KEPT * KEEP_SLACK;
``{prefix}legacy-hits:{tenant}:{day}`` (a counter a day); ``{prefix}parity:{tenant}`` (hash:
counts and latency buckets) and ``{prefix}parity-diff:{tenant}`` (sorted set, the most frequent
DISAGREEMENTS_KEPT * KEEP_SLACK disagreements). Every call works on a Cluster too: keys of
different slots are only ever read or written in (non-transactional) pipelines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from edge.modes.traffic import (
    DISAGREEMENTS_KEPT,
    KEEP_SLACK,
    REFERRERS_KEPT,
    RETENTION_SECONDS,
    Disagreement,
    ParityCounts,
    TrafficCounts,
)


@dataclass
class Queued:
    """Where in a flush's pipeline the replies the second round trip needs are."""

    grown: list[tuple[str, int]] = field(default_factory=list)  # tenant, its HLEN of times
    fixed: list[tuple[str, int]] = field(default_factory=list)  # tenant, its disagreements


class Insight:
    def __init__(self, client: Redis | RedisCluster, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def key(self, kind: str, tenant: str) -> str:
        return f"{self.prefix}{kind}:{tenant}"

    def queue(self, pipe: Any, counts: TrafficCounts) -> Queued:
        """Queue the insight's counts on a flush's pipeline."""
        queued = Queued()
        seen_at = counts.at.timestamp()
        for tenant, pages in counts.referrers.items():
            key, seen = self.key("referrers", tenant), self.key("referrers-seen", tenant)
            for page, count in pages.items():
                pipe.zincrby(key, count, page)
            pipe.hset(seen, mapping=dict.fromkeys(pages, seen_at))
            pipe.zremrangebyrank(key, 0, -REFERRERS_KEPT * KEEP_SLACK - 1)
            pipe.expire(key, RETENTION_SECONDS)
            pipe.expire(seen, RETENTION_SECONDS)
            pipe.hlen(seen)
            queued.grown.append((tenant, len(pipe) - 1))
        for tenant, count in counts.legacy_hits.items():
            key = self.key("legacy-hits", f"{tenant}:{counts.day}")
            pipe.incrby(key, count)
            pipe.expire(key, RETENTION_SECONDS)
        for tenant, parity in counts.parity.items():
            key = self.key("parity", tenant)
            pipe.hincrby(key, "mirrored", parity.mirrored)
            pipe.hincrby(key, "agreeing", parity.agreeing)
            for portal, buckets in parity.latency.items():
                for index, count in buckets.items():
                    pipe.hincrby(key, f"{portal}:{index}", count)
            pipe.expire(key, RETENTION_SECONDS)
            diff = self.key("parity-diff", tenant)
            if parity.fixed:
                pipe.zrange(diff, 0, -1)
                queued.fixed.append((tenant, len(pipe) - 1))
            if parity.disagreeing:
                for d, count in parity.disagreeing.items():
                    member = json.dumps([d.path, d.new_path, d.legacy_status, d.new_status])
                    pipe.zincrby(diff, count, member)
                pipe.zremrangebyrank(diff, 0, -DISAGREEMENTS_KEPT * KEEP_SLACK - 1)
                pipe.expire(diff, RETENTION_SECONDS)
        return queued

    async def settle(self, counts: TrafficCounts, queued: Queued, replies: list[Any]) -> None:
        """A second round trip, only when there is something to drop: the last-seen times of
        referrers trimmed from the counts, once a tenant's times outnumber the kept referrers
        (so a flood of made-up referrers grows neither key), and the disagreements of paths
        found fixed."""
        kept = REFERRERS_KEPT * KEEP_SLACK
        crowded = [tenant for tenant, at in queued.grown if replies[at] > kept]
        pipe = self.client.pipeline(transaction=False)
        for tenant in crowded:
            pipe.zrange(self.key("referrers", tenant), 0, -1)
            pipe.hkeys(self.key("referrers-seen", tenant))
        listed = await pipe.execute() if crowded else []
        pipe = self.client.pipeline(transaction=False)
        for index, tenant in enumerate(crowded):
            counted, timed = listed[2 * index], listed[2 * index + 1]
            if gone := set(timed) - set(counted):
                pipe.hdel(self.key("referrers-seen", tenant), *gone)
        for tenant, at in queued.fixed:
            mended = counts.parity[tenant].fixed
            if gone_diffs := [m for m in replies[at] if json.loads(m)[0] in mended]:
                pipe.zrem(self.key("parity-diff", tenant), *gone_diffs)
        if len(pipe):
            await pipe.execute()

    async def referrers(self, tenant: str, limit: int) -> list[tuple[str, int, datetime]]:
        pages: Any = await self.client.zrevrange(
            self.key("referrers", tenant), 0, limit - 1, withscores=True
        )
        if not pages:
            return []
        seen: Any = await self.client.hmget(
            self.key("referrers-seen", tenant), [page for page, _ in pages]
        )
        return [
            # A time trimmed by another instance between its two writes: shown as now's.
            (page, int(count), datetime.fromtimestamp(float(at), UTC) if at else datetime.now(UTC))
            for (page, count), at in zip(pages, seen, strict=True)
        ]

    async def legacy_hits(self, tenant: str, days: Sequence[str]) -> list[int]:
        if not days:
            return []
        pipe = self.client.pipeline(transaction=False)
        for day in days:
            pipe.get(self.key("legacy-hits", f"{tenant}:{day}"))
        return [int(value) if value else 0 for value in await pipe.execute()]

    async def parity(self, tenant: str) -> ParityCounts:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.key("parity", tenant))
        pipe.zrevrange(self.key("parity-diff", tenant), 0, DISAGREEMENTS_KEPT - 1, withscores=True)
        totals, diffs = await pipe.execute()
        counts = ParityCounts(int(totals.pop("mirrored", 0)), int(totals.pop("agreeing", 0)))
        for name, count in totals.items():
            portal, _, index = name.partition(":")
            counts.latency.setdefault(portal, {})[int(index)] = int(count)
        for member, count in diffs:
            path, new_path, legacy_status, new_status = json.loads(member)
            counts.disagreeing[Disagreement(path, new_path, legacy_status, new_status)] = int(count)
        return counts
