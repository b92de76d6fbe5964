"""TOML file + environment → validated, immutable settings.

Every problem names where it is: ``edge.toml: policy.legacy_sunset: ...`` for a key of the
file, ``EDGE_SERVER__PORT: ...`` for an environment variable. A bad config lists every
problem at once, one a line.

Environment variables override file values: ``EDGE_<SECTION>__<KEY>`` (for example
``EDGE_STORE__URL``), plus ``EDGE_ADMIN_TOKEN``. A value is read as the key it sets: a string
key takes the value as it is, a number or a switch is converted (``8080``, ``true``), a list
is a JSON array or comma-separated (``a.example.com,b.example.com``), a list of tables is
JSON, and an empty value unsets an optional key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

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
DEMO_CONFIG = Path(__file__).parent / "demo" / "demo.toml"  # `edge demo`'s, and only its
NO_CONFIG = (
    "no config file given: pass --config PATH or set EDGE_CONFIG=PATH "
    "(config/edge.toml is a commented example), or run `edge demo` to try edge on its "
    "built-in demo config"
)

_HOST_RE = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*(:\d{1,5})?$"
)
_DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*")
_TENANT_PLACEHOLDER = "{tenant}"


class ConfigError(ValueError):
    """A config that cannot be used: every problem found, each naming its key or variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    if "@" in parts.netloc:
        # Whether it would become Host or Authorization, a credential has no place here.
        raise ValueError("must not carry a user or password (user:password@)")
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
    # Client deadlines and bounds (docs/limits.md). A request head must arrive whole within
    # header_timeout of its first byte (of the connection, for its first request): else 408
    # and close. A request body may not stall longer than body_idle_timeout: 408 and close.
    # keepalive_timeout: idle between requests (longer than a load balancer's idle timeout).
    # send_timeout: a client that reads none of its response for this long is cut off.
    header_timeout: Seconds = Field(10.0, le=3600)
    body_idle_timeout: Seconds = Field(30.0, le=3600)
    keepalive_timeout: Seconds = Field(75.0, le=3600)
    send_timeout: Seconds = Field(60.0, le=3600)
    # Client connections per worker process; beyond it a new connection gets 503. Lowered at
    # start to what the descriptor limit leaves room for (and logged).
    max_connections: int = Field(10_000, ge=1, le=1_000_000)

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
    # Tenants with a key each process caches; those without one (legacy by default, or ids
    # nobody set up) in a cache of their own, each for negative_ttl seconds at most.
    cache_size: int = Field(1_000_000, ge=1)
    negative_cache_size: int = Field(10_000, ge=1)
    negative_ttl: float = Field(60.0, gt=0, le=86_400)
    # Cached tenants the periodic resync reads each resync_interval, in turn (all of them
    # while Redis does not report writes).
    resync_keys: int = Field(1_000, ge=1)
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
    # TLS to an https:// portal, as [store] has for Redis: the CA that signed the portal's
    # certificate (else the system's), and a client certificate when the portal asks for one.
    ssl_ca_certs: FilePath | None = None
    ssl_certfile: FilePath | None = None
    ssl_keyfile: FilePath | None = None
    ssl_check_hostname: bool = True

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

    def ssl_context(self) -> ssl.SSLContext | None:
        """How edge speaks TLS to this front's portal; None for an http:// portal.

        Raises PortalTLSError naming the key whose file cannot be used.
        """
        if not self.backend.startswith("https:"):
            return None
        try:
            context = ssl.create_default_context(cafile=self.ssl_ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise PortalTLSError("ssl_ca_certs", f"holds no usable CA certificate: {exc}") from None
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile is not None:
            try:
                # An empty password: a key that needs one fails here rather than prompting.
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password=b"")
            except (ssl.SSLError, OSError) as exc:
                wanted = "a PEM certificate" + (
                    ", matching ssl_keyfile (PEM, no password)"
                    if self.ssl_keyfile
                    else " followed by its key (PEM, no password)"
                )
                raise PortalTLSError("ssl_certfile", f"must be {wanted}: {exc}") from None
        return context

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


class PortalTLSError(ValueError):
    """A front's TLS file that cannot be used; ``key`` names it (``ssl_certfile``)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


class UpstreamSettings(_Section):
    connect_timeout: float = Field(5.0, gt=0)
    # Until the answer's head is in whole (interim 1xx answers included); then between reads of
    # a body with a Content-Length.
    read_timeout: float = Field(30.0, gt=0)
    pool_size: int = Field(512, ge=1)
    # The places one portal may hold; by default half the pool, so that a portal that hangs
    # leaves the other front its half.
    pool_size_per_host: int | None = Field(None, ge=1)
    # A portal's answer head (interim 1xx answers included), and its trailer section: over
    # these the answer is a 502 and the connection is closed.
    max_header_bytes: int = Field(32768, ge=1024, le=1_048_576)
    max_headers: int = Field(100, ge=16, le=10_000)
    # Idle pooled connections are dropped before the backend's own idle timeout (uvicorn: 5 s),
    # so a request never goes out on a connection the backend is closing.
    keepalive_timeout: float = Field(4.0, gt=0)
    # read_timeout bounds the wait for the response headers and each read of a body with a
    # Content-Length; a streamed body (no Content-Length: server-sent events, long polls) may
    # stay idle this long between reads instead. 0: no limit.
    stream_idle_timeout: float = Field(300.0, ge=0)

    @model_validator(mode="after")
    def _places(self) -> UpstreamSettings:
        if self.pool_size_per_host is not None and self.pool_size_per_host > self.pool_size:
            raise _keyed("upstream.pool_size_per_host", "must not exceed upstream.pool_size")
        return self

    @property
    def places_per_portal(self) -> int:
        return self.pool_size_per_host or max(1, self.pool_size // 2)


class WebSocketSettings(_Section):
    max_message_size: int = Field(1024 * 1024, ge=1024)  # bytes, each way; larger closes 1009
    ping_interval: float = Field(20.0, gt=0)  # seconds; to the client and to the portal
    max_connections: int = Field(4096, ge=1)  # per process, apart from the HTTP pool


class ShadowSettings(_Section):
    """Shadow parity (docs/activation.md): setup reads mirrored to the new portal."""

    sample_rate: float = Field(0.0, ge=0, le=1)  # share of eligible reads mirrored; 0: off
    queue: int = Field(100, ge=1, le=100_000)  # mirrors waiting, per process; beyond, dropped
    concurrency: int = Field(4, ge=1, le=256)  # mirrors in flight, per process
    timeout: Seconds = Field(10.0, le=300)  # for the new portal's whole answer


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
    shadow: ShadowSettings = ShadowSettings()
    admin: AdminSettings = AdminSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems: list[tuple[str, str]] = []
        shared = set(self.legacy.hosts) & set(self.new.hosts)
        if shared:
            problems.append(("new.hosts", f"{sorted(shared)[0]!r} is listed on both fronts"))
        if self.store.embedded and self.server.workers > 1:
            problems.append(("server.workers", "memory:// is a single-process store: use 1 worker"))
        if self.admin.port and self.admin.port == self.server.port:
            problems.append(("admin.port", "must differ from server.port"))
        if self.policy.private_preview and not (self.admin.preview_secret or self.admin.token):
            problems.append(
                (
                    "admin.preview_secret",
                    "policy.private_preview needs a secret to sign preview links: "
                    "set admin.preview_secret (or admin.token)",
                )
            )
        problems += _portal_tls_problems("legacy", self.legacy)
        problems += _portal_tls_problems("new", self.new)
        if problems:
            raise _KeyedError(problems)
        return self


def _portal_tls_problems(name: str, front: FrontSettings) -> list[tuple[str, str]]:
    problems = [
        (f"{name}.{key}", f"needs an https:// {name}.backend")
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
        if getattr(front, key) is not None and not front.backend.startswith("https:")
    ]
    if front.ssl_keyfile is not None and front.ssl_certfile is None:
        problems.append((f"{name}.ssl_keyfile", f"needs {name}.ssl_certfile"))
    if not problems:
        try:
            front.ssl_context()
        except PortalTLSError as exc:
            problems.append((f"{name}.{exc.key}", str(exc)))
    return problems


class _KeyedError(ValueError):
    """Problems a validator found across keys, each with the key it is about."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(problem for _, problem in problems))
        self.problems = problems


def _keyed(key: str, problem: str) -> _KeyedError:
    return _KeyedError([(key, problem)])


def config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """The config file given, by argument or EDGE_CONFIG; ConfigError when neither is."""
    given = path or env.get(ENV_CONFIG)
    if not given:
        raise ConfigError([NO_CONFIG])
    return Path(given)


def load(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read, merge and validate; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    source = config_path(path, env)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{source}: no such config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot be read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    overrides = EnvOverrides.read(env)
    return from_mapping(overrides.applied_to(raw), source=str(source), overrides=overrides)


def from_mapping(
    raw: Mapping[str, Any], source: str = "config", overrides: EnvOverrides | None = None
) -> Settings:
    """Validate; every problem is named by its environment variable or by ``source: key``."""
    overrides = overrides or EnvOverrides()
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems = [overrides.name(key, problem, source) for key, problem in _problems(exc)]
        raise ConfigError(overrides.problems + problems) from None
    if overrides.problems:
        raise ConfigError(overrides.problems)
    return settings


def _problems(exc: ValidationError) -> list[tuple[tuple[str, ...], str]]:
    """Each problem pydantic found: the key's path, and what is wrong."""
    found: list[tuple[tuple[str, ...], str]] = []
    for error in exc.errors(include_url=False):
        context_error = (error.get("ctx") or {}).get("error")
        if isinstance(context_error, _KeyedError):
            found.extend(
                (tuple(key.split(".")), problem) for key, problem in context_error.problems
            )
            continue
        path = tuple(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "is required"
        found.append((path, message))
    return found


class EnvOverrides:
    """The ``EDGE_<SECTION>__<KEY>`` variables, each read as the type of the key it sets."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], Any] = {}
        self.variables: dict[tuple[str, str], str] = {}  # (section, key) → variable name
        self.problems: list[str] = []  # variables that set no key, or cannot be read

    @classmethod
    def read(cls, env: Mapping[str, str]) -> EnvOverrides:
        overrides = cls()
        for name, value in sorted(env.items()):
            if name.startswith(ENV_PREFIX) and "__" in name:
                section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
                overrides.add(name, section, key, value)
        token = env.get(ENV_ADMIN_TOKEN)
        if token is not None:
            if overrides.values.get(("admin", "token"), token) != token:
                variable = overrides.variables[("admin", "token")]
                overrides.problems.append(
                    f"{ENV_ADMIN_TOKEN}: {variable} is set too, to another value: set one"
                )
            else:
                overrides.add(ENV_ADMIN_TOKEN, "admin", "token", token)
        return overrides

    def add(self, variable: str, section: str, key: str, text: str) -> None:
        field = _section_field(section, key)
        if field is None:
            self.problems.append(f"{variable}: sets no config key ([{section}] {key})")
            return
        try:
            self.values[(section, key)] = _typed(field, text)
        except ValueError as exc:
            self.problems.append(f"{variable}: {exc}")
            return
        self.variables[(section, key)] = variable

    def applied_to(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {
            name: dict(section) if isinstance(section, Mapping) else section
            for name, section in raw.items()
        }
        for (section, key), value in self.values.items():
            target = merged.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = value
        return merged

    def name(self, path: tuple[str, ...], problem: str, source: str) -> str:
        """A problem as ops read it: by its variable when one set the key, else by the key."""
        variable = self.variables.get((path[0], path[1])) if len(path) >= 2 else None
        if variable is None:
            return f"{source}: {'.'.join(path) or 'config'}: {problem}"
        within = ".".join(path[2:])
        return f"{variable}: {within + ': ' if within else ''}{problem}"


def _section_field(section: str, key: str) -> Any:
    """The type of ``[section] key`` in the schema, or None when there is no such key."""
    field = Settings.model_fields.get(section)
    model = field.annotation if field is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    key_field = model.model_fields.get(key)
    return key_field.annotation if key_field is not None else None


def _typed(annotation: Any, text: str) -> Any:
    """An environment value as the type of its key; pydantic validates it after."""
    members = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ()
    optional = type(None) in members
    if optional:
        (annotation,) = (member for member in members if member is not type(None))
        if not text.strip():
            return None
    origin = get_origin(annotation)
    if origin in (tuple, list):
        return _sequence(get_args(annotation)[0], text)
    if origin is Literal and all(isinstance(v, int) for v in get_args(annotation)):
        return int(text) if text.strip().isdigit() else text
    return text  # strings as they are; pydantic converts numbers, switches and instants


def _sequence(item: Any, text: str) -> Any:
    """A list: a JSON array, or (of strings) comma-separated values."""
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON array: {exc}") from None
    if item is str:
        return [part.strip() for part in text.split(",") if part.strip()]
    raise ValueError("must be a JSON array, such as [{...}, {...}]")


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
