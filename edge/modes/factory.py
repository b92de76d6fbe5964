"""``[store].url`` → a ModeStore."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from edge.config import StoreSettings
from edge.modes.base import ModeStore
from edge.modes.memory import MemoryStore
from edge.modes.redis import RedisStore, client_options


def open_store(settings: StoreSettings) -> ModeStore:
    """Raises ValueError for a URL it cannot use; connects lazily, on first use."""
    scheme = urlsplit(settings.url).scheme
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore.from_url(settings.url, prefix=settings.prefix, timeout=settings.timeout)
    if scheme == "redis+sentinel":
        return RedisStore(
            sentinel_client(settings.url, settings.timeout),
            prefix=settings.prefix,
            timeout=settings.timeout,
        )
    raise ValueError(f"store.url: {scheme}:// is not supported yet")


def sentinel_client(url: str, timeout: float) -> Redis:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``.

    The user and password are the master's; ``?sentinel_password=`` authenticates with the
    sentinels. The client asks the sentinels for the master on every (re)connect.
    """
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    service, _, db = parts.path.strip("/").partition("/")
    if not hostlist or not service or not (db or "0").isdigit():
        raise ValueError(f"store.url: {url!r} is not redis+sentinel://host:port,.../service/db")
    sentinels = [_host_port(item, url) for item in hostlist.split(",")]
    query = parse_qs(parts.query)
    sentinel_password = query.get("sentinel_password", [None])[0]
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        socket_timeout=timeout,
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "password": sentinel_password,
        },
    )
    client: Redis = sentinel.master_for(
        service,
        db=int(db or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
        **client_options(timeout),
    )
    return client


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, _, port = item.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"store.url: {item!r} in {url!r} is not host:port")
    return host.strip("[]"), int(port)
