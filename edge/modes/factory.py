"""``[store]`` → a ModeStore: embedded, one Redis server, Redis Sentinel or Redis Cluster."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from edge.config import RedisNodes, StoreSettings, redis_nodes
from edge.modes.base import ModeStore
from edge.modes.memory import MemoryStore
from edge.modes.redis import RedisStore, client_options
from edge.modes.redis_cluster import RedisClusterStore


def open_store(settings: StoreSettings) -> ModeStore:
    """Connects lazily, on first use. The settings were validated, so the URL is usable."""
    if settings.embedded:
        return MemoryStore()
    options = {**client_options(settings.timeout), **tls_options(settings)}
    nodes = redis_nodes(settings.url)
    if nodes is not None and nodes.kind == "cluster":
        return RedisClusterStore(
            cluster_client(nodes, options),
            prefix=settings.prefix,
            timeout=settings.timeout,
            wait_replicas=settings.wait_replicas,
        )
    if nodes is None:
        client = Redis.from_url(settings.url, **options)
    else:
        client = sentinel_client(nodes, options)
    return RedisStore(
        client,
        prefix=settings.prefix,
        timeout=settings.timeout,
        wait_replicas=settings.wait_replicas,
    )


def tls_options(settings: StoreSettings) -> dict[str, Any]:
    if not settings.tls:
        return {}
    files = {
        key: str(path)
        for key, path in (
            ("ssl_ca_certs", settings.ssl_ca_certs),
            ("ssl_certfile", settings.ssl_certfile),
            ("ssl_keyfile", settings.ssl_keyfile),
        )
        if path is not None
    }
    return {**files, "ssl_check_hostname": settings.ssl_check_hostname}


def sentinel_client(nodes: RedisNodes, options: dict[str, Any]) -> Redis:
    """The master's client: it asks the sentinels for the master on every (re)connect.

    With TLS, the sentinels and the data nodes are both spoken to over TLS.
    """
    to_sentinels = {key: value for key, value in options.items() if key != "decode_responses"}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(nodes.hosts),
        sentinel_kwargs={**to_sentinels, "ssl": nodes.tls, "password": nodes.sentinel_password},
    )
    client: Redis = sentinel.master_for(
        nodes.master_name,
        db=nodes.db,
        username=nodes.username,
        password=nodes.password,
        ssl=nodes.tls,
        **options,
    )
    return client


def cluster_client(nodes: RedisNodes, options: dict[str, Any]) -> RedisCluster:
    """Seeds are enough: the client learns the slot map (and its changes) from the cluster."""
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes.hosts],
        username=nodes.username,
        password=nodes.password,
        ssl=nodes.tls,
        **options,
    )
