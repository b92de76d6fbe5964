"""The store's URL shapes: the schemes edge accepts, Sentinel and Cluster URLs parsed, and any
URL shown without its passwords."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

STORE_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
_SENTINEL_URL = "redis+sentinel://[[user]:password@]host:port[,host:port...]/master-name[/db]"
_CLUSTER_URL = "redis+cluster://[[user]:password@]host:port[,host:port...]"


@dataclass(frozen=True)
class RedisNodes:
    """A Sentinel or Cluster store URL, parsed.

    ``hosts`` are the sentinels (Sentinel) or the seed nodes (Cluster). The user and password
    are the data nodes'; ``?sentinel_password=`` authenticates with the sentinels.
    """

    kind: Literal["sentinel", "cluster"]
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    master_name: str  # Sentinel only
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None


def redis_nodes(url: str) -> RedisNodes | None:
    """Parse a Sentinel or Cluster URL (None for any other); ValueError says what is wrong."""
    parts = urlsplit(url)
    base, plus, kind = parts.scheme.partition("+")
    if not plus:
        return None
    if kind not in ("sentinel", "cluster"):
        raise ValueError(f"unsupported scheme {parts.scheme!r}")
    shape = _SENTINEL_URL if kind == "sentinel" else _CLUSTER_URL
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts = tuple(_host_port(item, shape) for item in hostlist.split(",") if item)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.strip("/")
    if kind == "sentinel":
        master_name, _, db = path.partition("/")
        allowed = {"sentinel_password"}
    else:
        master_name, db = "", path
        allowed = set()
        if db not in ("", "0"):
            raise ValueError("a Redis Cluster has only database 0")
    if not hosts or (kind == "sentinel" and not master_name) or not (db or "0").isdigit():
        raise ValueError(f"must look like {shape}")
    if unknown := sorted(set(query) - allowed):
        raise ValueError(f"unknown option {unknown[0]!r} in the url")
    return RedisNodes(
        kind="sentinel" if kind == "sentinel" else "cluster",
        tls=base == "rediss",
        hosts=hosts,
        master_name=unquote(master_name),
        db=int(db or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=query.get("sentinel_password", [None])[0],
    )


def _host_port(item: str, shape: str) -> tuple[str, int]:
    host, _, port = item.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{item!r} is not host:port; must look like {shape}")
    return host.strip("[]"), int(port)


def redacted_url(url: str) -> str:
    """The URL without its passwords (in the user part and in the query), for showing."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = "&".join(
        f"{name}=***" if "password" in unquote(name).lower() else f"{name}{equals}{value}"
        for name, equals, value in (item.partition("=") for item in parts.query.split("&"))
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))
