"""The config's schema: each section's keys, their defaults and what makes a value wrong.

A validator that judges keys across a section raises ``KeyedError``, naming each key it is about.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge.config.store_urls import STORE_SCHEMES, redacted_url, redis_nodes

_HOST_RE = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*(:\d{1,5})?$"
)
_DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*")
_TENANT_PLACEHOLDER = "{tenant}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {redacted_url(value)!r}")
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
Duration = Annotated[float, BeforeValidator(_seconds)]  # seconds, or "90s", "15m", "24h", "7d"
Seconds = Annotated[Duration, Field(gt=0)]


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    graceful_timeout: Duration = Field(30.0, ge=0)
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
    resync_interval: Duration = Field(2.0, gt=0, le=3600)
    timeout: Duration = Field(0.5, gt=0, le=60)
    # Tenants with a key each process caches; those without one (legacy by default, or ids
    # nobody set up) in a cache of their own, each for negative_ttl seconds at most.
    cache_size: int = Field(1_000_000, ge=1)
    negative_cache_size: int = Field(10_000, ge=1)
    negative_ttl: Duration = Field(60.0, gt=0, le=86_400)
    # Cached tenants the periodic resync reads each resync_interval, in turn (all of them
    # while Redis does not report writes).
    resync_keys: int = Field(1_000, ge=1)
    # Seconds between writes of this process's traffic counts (deep links, watch) to the store.
    flush_interval: Duration = Field(5.0, gt=0, le=3600)

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
    connect_timeout: Duration = Field(5.0, gt=0)
    # Until the answer's head is in whole (interim 1xx answers included); then between reads of
    # a body with a Content-Length.
    read_timeout: Duration = Field(30.0, gt=0)
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
    keepalive_timeout: Duration = Field(4.0, gt=0)
    # read_timeout bounds the wait for the response headers and each read of a body with a
    # Content-Length; a streamed body (no Content-Length: server-sent events, long polls) may
    # stay idle this long between reads instead. 0: no limit.
    stream_idle_timeout: Duration = Field(300.0, ge=0)

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
    ping_interval: Duration = Field(20.0, gt=0)  # seconds; to the client and to the portal
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

    @field_validator("token", "preview_secret")
    @classmethod
    def _secret(cls, value: str, info: ValidationInfo) -> str:
        if value and len(value) < 16:
            empty = " (or empty to allow no changes)" if info.field_name == "token" else ""
            raise ValueError(f"must be at least 16 characters{empty}")
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
        problems = cross_key_problems(dict(self))
        if problems:
            raise KeyedError(problems)
        return self


def cross_key_problems(sections: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The problems between keys of different sections, each checked when the sections it
    reads are valid on their own (given whole: a file's other problems do not hide these)."""
    problems: list[tuple[str, str]] = []
    legacy, new = sections.get("legacy"), sections.get("new")
    server, store, admin = sections.get("server"), sections.get("store"), sections.get("admin")
    policy = sections.get("policy")
    if legacy and new and (shared := set(legacy.hosts) & set(new.hosts)):
        problems.append(("new.hosts", f"{sorted(shared)[0]!r} is listed on both fronts"))
    if store and server and store.embedded and server.workers > 1:
        problems.append(("server.workers", "memory:// is a single-process store: use 1 worker"))
    if admin and server and admin.port and admin.port == server.port:
        problems.append(("admin.port", "must differ from server.port"))
    if policy and admin and policy.private_preview and not (admin.preview_secret or admin.token):
        problems.append(
            (
                "admin.preview_secret",
                "policy.private_preview needs a secret to sign preview links: "
                "set admin.preview_secret (or admin.token)",
            )
        )
    for name, front in (("legacy", legacy), ("new", new)):
        if front:
            problems += _portal_tls_problems(name, front)
    return problems


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


class KeyedError(ValueError):
    """Problems a validator found across keys, each with the key it is about."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(problem for _, problem in problems))
        self.problems = problems


def _keyed(key: str, problem: str) -> KeyedError:
    return KeyedError([(key, problem)])
