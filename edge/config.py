"""TOML file + environment → validated, immutable settings.

Every error names the key it is about, on one line: ``policy.legacy_sunset: ...``.
Environment variables override file values: ``EDGE_<SECTION>__<KEY>`` (for example
``EDGE_STORE__URL``), plus ``EDGE_ADMIN_TOKEN``. A value is read as a TOML value when it
parses as one (``8080``, ``true``, ``["a", "b"]``) and as a plain string otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "EDGE_"
ENV_CONFIG = "EDGE_CONFIG"
ENV_ADMIN_TOKEN = "EDGE_ADMIN_TOKEN"  # noqa: S105 (a variable name)
DEFAULT_CONFIG = Path(__file__).with_name("demo.toml")

_HOST_RE = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*(:\d{1,5})?$"
)
_DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*")
_TENANT_PLACEHOLDER = "{tenant}"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value.rstrip("/")


def _public_url(value: str) -> str:
    # {tenant} may stand in the host (subdomain portals): check the URL with it filled in.
    _http_url(value.replace(_TENANT_PLACEHOLDER, "tenant"))
    return value.rstrip("/")


def _path_template(value: str) -> str:
    if not value.startswith("/") or "//" in value or "\\" in value or "?" in value:
        raise ValueError(f"must be an absolute path without '//', '\\' or '?', got {value!r}")
    return value


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float:
    """A duration written as seconds or with a unit: "90", "90s", "15m", "24h", "7d"."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use seconds or e.g. 90s, 15m, 24h, 7d")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def _seconds(value: Any) -> Any:
    return duration_seconds(value) if isinstance(value, str) else value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
PublicUrl = Annotated[str, AfterValidator(_public_url)]
PathTemplate = Annotated[str, AfterValidator(_path_template)]
Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    graceful_timeout: float = Field(30.0, ge=0)
    trusted_proxies: tuple[str, ...] = ()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    # Request head limits, as nginx's defaults: over them 414 (target) or 431 (headers).
    max_url_bytes: int = Field(8192, ge=256, le=1_048_576)
    max_header_bytes: int = Field(32768, ge=1024, le=1_048_576)
    max_headers: int = Field(100, ge=16, le=10_000)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
        return value


class StoreSettings(_Section):
    url: str = "memory://"
    prefix: str = Field("edge:", min_length=1, max_length=64)
    resync_interval: float = Field(2.0, gt=0, le=3600)
    timeout: float = Field(0.5, gt=0, le=60)
    cache_size: int = Field(1_000_000, ge=1)
    # Seconds between writes of this process's traffic counts (deep links, watch) to the store.
    flush_interval: float = Field(5.0, gt=0, le=3600)

    # TLS (rediss:// and rediss+sentinel:// or rediss+cluster://): the CA that signed the
    # servers' certificates, and a client certificate when the servers ask for one.
    ssl_ca_certs: FilePath | None = None
    ssl_certfile: FilePath | None = None
    ssl_keyfile: FilePath | None = None
    ssl_check_hostname: bool = True
    # Replicas that must confirm a change (Redis WAIT) before edge reports it done.
    wait_replicas: int = Field(0, ge=0, le=64)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in STORE_SCHEMES:
            raise ValueError(
                f"unsupported scheme {scheme!r}: use redis://, rediss://, unix://, "
                "redis+sentinel://, redis+cluster:// (rediss+ for TLS) or memory://"
            )
        redis_nodes(value)  # a Sentinel or Cluster URL must be well formed
        return value

    @model_validator(mode="after")
    def _tls_and_replicas(self) -> StoreSettings:
        tls_files = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
        for key in tls_files:
            if getattr(self, key) is not None and not self.tls:
                raise _keyed(f"store.{key}", "needs a TLS store url (rediss://...)")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise _keyed("store.ssl_keyfile", "needs store.ssl_certfile")
        if self.wait_replicas and self.embedded:
            raise _keyed("store.wait_replicas", "needs a Redis store")
        return self

    @property
    def embedded(self) -> bool:
        return self.url.startswith("memory:")

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme.startswith("rediss")


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


TenantRule = Literal["path", "subdomain", "header"]


class FrontSettings(_Section):
    hosts: tuple[str, ...] = Field(min_length=1)
    backend: HttpUrl
    public_url: PublicUrl
    tenant: TenantRule = "path"
    # A header name (RFC 9110 token) without "_": edge does not forward such names.
    tenant_header: str = Field("X-Tenant", pattern=r"^[!#$%&'*+.^`|~0-9A-Za-z-]+$")
    home: PathTemplate | None = None
    # The Host the portal gets: the client's ("preserve"), or its own URL's ("backend").
    host_header: Literal["preserve", "backend"] = "preserve"
    # A Location pointing at the backend's own URL is rewritten to point at public_url.
    rewrite_location: bool = False
    # The Domain of a Set-Cookie from the portal, where it names one, is rewritten to this.
    cookie_domain: str | None = None

    @field_validator("cookie_domain")
    @classmethod
    def _cookie_domain(cls, value: str | None) -> str | None:
        if value is not None and not _DOMAIN_RE.fullmatch(value.lower()):
            raise ValueError(f"{value!r} is not a domain name such as portal.example.com")
        return value.lower() if value is not None else None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        lowered = tuple(host.lower() for host in value)
        for host in lowered:
            if not _HOST_RE.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name (wildcards only as '*.domain')")
        return lowered

    @model_validator(mode="after")
    def _rule_fits_hosts(self) -> FrontSettings:
        if self.tenant == "subdomain" and not all(h.startswith("*.") for h in self.hosts):
            raise ValueError("tenant = 'subdomain' needs every host written as '*.domain'")
        return self

    @property
    def home_template(self) -> str:
        """The tenant's home page path on this portal, with ``{tenant}`` to fill in."""
        if self.home is not None:
            return self.home
        return "/{tenant}/" if self.tenant == "path" else "/"


class PathRule(_Section):
    """Legacy path prefix → new path prefix; ``{tenant}`` may appear in both."""

    legacy: PathTemplate = Field(alias="from")
    new: PathTemplate = Field(alias="to")


class AllowRule(_Section):
    """A write that setup mode lets through to the new portal (for example staff login)."""

    method: str = Field(pattern=r"^[A-Z]+$")
    path: PathTemplate


class PolicySettings(_Section):
    legacy_sunset: datetime | None = None
    redirect_status: Literal[301, 302] = 302
    setup_allow: tuple[AllowRule, ...] = ()
    path_rules: tuple[PathRule, ...] = ()
    # Safe activation: see README, "Safe activation".
    private_preview: bool = False
    preview_ttl: Seconds = 7 * 86400
    deep_links: int = Field(500, ge=1, le=100_000)
    activation_coverage: float = Field(0.95, ge=0, le=1)
    readiness_rate: float = Field(20.0, gt=0, le=10_000)
    readiness_concurrency: int = Field(4, ge=1, le=256)
    watch_window: Seconds = 24 * 3600
    watch_rise: float = Field(0.02, gt=0, le=1)

    @field_validator("legacy_sunset", mode="before")
    @classmethod
    def _instant(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO-8601 instant") from None
        if isinstance(value, datetime) and value.utcoffset() is None:
            raise ValueError("must be an instant with a UTC offset, such as 2027-03-31T22:00:00Z")
        return value


class UpstreamSettings(_Section):
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(30.0, gt=0)
    pool_size: int = Field(512, ge=1)
    pool_size_per_host: int = Field(0, ge=0)
    # Idle pooled connections are dropped before the backend's own idle timeout (uvicorn: 5 s),
    # so a request never goes out on a connection the backend is closing.
    keepalive_timeout: float = Field(4.0, gt=0)
    # read_timeout bounds the wait for the response headers and each read of a body with a
    # Content-Length; a streamed body (no Content-Length: server-sent events, long polls) may
    # stay idle this long between reads instead. 0: no limit.
    stream_idle_timeout: float = Field(300.0, ge=0)


class WebSocketSettings(_Section):
    max_message_size: int = Field(1024 * 1024, ge=1024)  # bytes, each way; larger closes 1009
    ping_interval: float = Field(20.0, gt=0)  # seconds; to the client and to the portal
    max_connections: int = Field(4096, ge=1)  # per process, apart from the HTTP pool


class AdminSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)
    token: str = ""
    preview_secret: str = ""  # signs private preview links; the token when empty

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters (or empty to allow no changes)")
        return value

    @field_validator("preview_secret")
    @classmethod
    def _preview_secret(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters")
        return value


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    legacy: FrontSettings
    new: FrontSettings
    policy: PolicySettings = PolicySettings()
    upstream: UpstreamSettings = UpstreamSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    admin: AdminSettings = AdminSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        shared = set(self.legacy.hosts) & set(self.new.hosts)
        if shared:
            raise _keyed("new.hosts", f"{sorted(shared)[0]!r} is listed on both fronts")
        if self.store.embedded and self.server.workers > 1:
            raise _keyed("server.workers", "memory:// is a single-process store: use 1 worker")
        if self.admin.port and self.admin.port == self.server.port:
            raise _keyed("admin.port", "must differ from server.port")
        if self.policy.private_preview and not (self.admin.preview_secret or self.admin.token):
            raise _keyed(
                "admin.preview_secret",
                "policy.private_preview needs a secret to sign preview links: "
                "set admin.preview_secret (or admin.token)",
            )
        return self


class _KeyedError(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def _keyed(key: str, problem: str) -> _KeyedError:
    return _KeyedError(key, problem)


def load(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read, merge and validate; raise ConfigError naming the key on any problem."""
    env = os.environ if env is None else env
    source = Path(path or env.get(ENV_CONFIG) or DEFAULT_CONFIG)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return from_mapping(_with_env(raw, env), source=str(source))


def from_mapping(raw: Mapping[str, Any], source: str = "config") -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_problem(exc)}") from None


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    context_error = (error.get("ctx") or {}).get("error")
    if isinstance(context_error, _KeyedError):
        return f"{context_error.key}: {context_error}"
    key = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "is required"
    return f"{key or 'config'}: {message}"


def _with_env(raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        name: dict(section) if isinstance(section, Mapping) else section
        for name, section in raw.items()
    }
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        target = merged.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = _env_value(value)
    if token := env.get(ENV_ADMIN_TOKEN):
        merged.setdefault("admin", {})["token"] = token
    return merged


def _env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value
