"""Decide: one request's front, tenant, mode and method → one Decision. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import quote, unquote_plus

from edge.config import PathRule, Settings
from edge.core.http import METHOD_OVERRIDE_HEADERS, SAFE_METHODS
from edge.core.tenants import Front, Mode

# Query parameters read the same way (Laravel, Symfony, Express's method-override, Spring's
# HiddenHttpMethodFilter: "_method"), named as _override_parameter spells them.
_OVERRIDE_PARAMETERS = frozenset(
    {"_method", *(name.replace("-", "_") for name in METHOD_OVERRIDE_HEADERS)}
)
# How a WebSocket handshake is judged: a channel that carries writes. An allow-list entry for
# WEBSOCKET (or GET, which the handshake is on the wire) names the paths where one may open.
WEBSOCKET = "WEBSOCKET"


class Reason(StrEnum):
    RETIRED = "retired"
    BLOCKED = "blocked"
    NOT_ENABLED = "not_enabled"
    MISCONFIGURED = "misconfigured"


@dataclass(frozen=True, slots=True)
class Forward:
    front: Front


@dataclass(frozen=True, slots=True)
class Redirect:
    location: str
    status: int


@dataclass(frozen=True, slots=True)
class Refuse:
    status: int
    reason: Reason
    message: str


Decision = Forward | Redirect | Refuse

FORWARD_LEGACY = Forward(Front.LEGACY)
FORWARD_NEW = Forward(Front.NEW)
# decide() runs for every request, and an Enum member read through its class costs several
# times a global's on Python 3.11.
_LEGACY_FRONT = Front.LEGACY
_LEGACY, _SETUP, _ACTIVE = Mode.LEGACY, Mode.SETUP, Mode.ACTIVE


@dataclass(frozen=True, slots=True)
class AllowRule:
    method: str
    path: str

    def matches(self, tenant: str, method: str, path: str) -> bool:
        if method != self.method:
            return False
        pattern = self.path.replace("{tenant}", tenant)
        if pattern.endswith("/*"):
            return path.startswith(pattern[:-1])
        return path == pattern


@dataclass(frozen=True, slots=True)
class Policy:
    sunset: datetime | None
    redirect_status: int
    setup_allow: tuple[AllowRule, ...]
    path_rules: tuple[PathRule, ...]
    new_url: str
    new_home: str
    legacy_url: str
    legacy_home: str
    private_preview: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        policy = settings.policy
        return cls(
            sunset=policy.legacy_sunset,
            redirect_status=policy.redirect_status,
            setup_allow=tuple(
                AllowRule(WEBSOCKET if r.method == "GET" else r.method, r.path)
                for r in policy.setup_allow
            ),
            path_rules=policy.path_rules,
            new_url=settings.new.public_url,
            new_home=settings.new.home_template,
            legacy_url=settings.legacy.public_url,
            legacy_home=settings.legacy.home_template,
            private_preview=policy.private_preview,
        )

    def new_path(self, tenant: str, path: str) -> str:
        """Where a legacy path maps on the new portal (first matching rule, else home), encoded."""
        return _clean_path(_map_path(self.path_rules, tenant, path) or _fill(self.new_home, tenant))

    def new_location(self, tenant: str, path: str, query: bytes) -> str:
        """Where a legacy URL lives on the new portal, built from configuration only."""
        return _with_query(_fill(self.new_url, tenant) + self.new_path(tenant, path), query)

    def new_page(self, tenant: str, path: str, query: str = "") -> str:
        """The new-portal URL of a (decoded) new-portal path, built from configuration only."""
        return _with_query(_fill(self.new_url, tenant) + _clean_path(path), query)

    def legacy_home_location(self, tenant: str) -> str:
        return _fill(self.legacy_url, tenant) + _fill(self.legacy_home, tenant)

    def new_home_location(self, tenant: str) -> str:
        return _fill(self.new_url, tenant) + _fill(self.new_home, tenant)


def effective_method(method: str, overrides: Iterable[str]) -> str:
    """The method to judge a request by: an override header that names a write wins.

    A write that claims to be another write (PUT overridden to POST) is judged as both,
    "PUT/POST", which no allow-list entry names: the backend sees one of them (override
    headers are never forwarded), but a framework might act on the other.
    """
    for value in overrides:
        override = value.strip() or "POST"
        if override == method or override in SAFE_METHODS:
            continue
        return override if method in SAFE_METHODS else f"{method}/{override}"
    return method


def judged_method(
    method: str, overrides: Iterable[str] = (), *, query: bytes = b"", body: bool = False
) -> str:
    """The method a request is judged by where reads and writes part ways.

    A method override (header or query parameter) that names a write makes it that write; a
    read that carries a body is not a read, and no allow-list entry names it.
    """
    if query:
        overrides = (*overrides, *query_overrides(query))
    judged = effective_method(method, overrides)
    return f"{judged} with a body" if body and judged in SAFE_METHODS else judged


def query_overrides(query: bytes) -> tuple[str, ...]:
    """The values of query parameters that a backend framework may take for the method.

    Names are read as PHP reads them (decoded, ended by a NUL as a C string is, leading
    spaces dropped, " " and "." as "_", "[...]" an array of the same name), in any case,
    "-" or "_"; ";" separates parameters as "&" does for some parsers. An empty value
    overrides nothing.
    """
    found: list[str] = []
    for parameter in query.decode("latin-1").replace(";", "&").split("&"):
        name, _, value = parameter.partition("=")
        if _override_parameter(name) and (value := unquote_plus(value).strip()):
            found.append(value.upper())
    return tuple(found)


def _override_parameter(name: str) -> bool:
    spelt = unquote_plus(name).partition("\x00")[0].lstrip(" ").partition("[")[0].lower()
    return spelt.translate(_AS_UNDERSCORE) in _OVERRIDE_PARAMETERS


_AS_UNDERSCORE = str.maketrans(" .-", "___")


def decide(
    front: Front,
    tenant: str,
    mode: Mode | None,
    method: str,
    path: str,
    query: bytes,
    clock: Callable[[], datetime],
    policy: Policy,
    previewer: bool = False,
) -> Decision:
    """The routing matrix of docs/routing.md. ``mode`` None means the stored value was not a mode.

    ``clock`` is read only when the sunset matters: on most requests it does not, and a read
    costs a tenth of all the routing.

    ``previewer``: the request carries a valid preview cookie for this tenant; with
    ``private_preview`` only such requests see a setup tenant's preview.
    """
    if mode is None:
        return _MISCONFIGURED
    if front is _LEGACY_FRONT:
        if mode is _ACTIVE:
            return Redirect(policy.new_location(tenant, path, query), _status(method, policy))
        if policy.sunset is not None and clock() >= policy.sunset:
            return _RETIRED
        return FORWARD_LEGACY
    if mode is _ACTIVE:
        return FORWARD_NEW
    if method in SAFE_METHODS:
        if mode is _SETUP and (previewer or not policy.private_preview):
            return FORWARD_NEW
        return Redirect(policy.legacy_home_location(tenant), 302)
    if mode is _LEGACY:
        return _NOT_ENABLED
    if any(rule.matches(tenant, method, path) for rule in policy.setup_allow):
        return FORWARD_NEW
    return _BLOCKED


def refusal_home(
    policy: Policy, reason: Reason, tenant: str, mode: Mode | None, now: datetime
) -> tuple[Front, str] | None:
    """The portal home that serves a refused customer instead, where one does.

    A write refused on the new portal (not enabled, or the read-only preview) can be made
    on the Parent Portal while it has not been retired. A retired Parent Portal points a
    setup tenant's customers at the preview, when the preview is open to them; a legacy
    tenant has no portal left to offer, and an active one is redirected, never refused.
    """
    if reason in (Reason.BLOCKED, Reason.NOT_ENABLED):
        if policy.sunset is None or now < policy.sunset:
            return Front.LEGACY, policy.legacy_home_location(tenant)
    elif reason is Reason.RETIRED and mode is _SETUP and not policy.private_preview:
        return Front.NEW, policy.new_home_location(tenant)
    return None


def _status(method: str, policy: Policy) -> int:
    permanent = policy.redirect_status == 301
    if method in ("GET", "HEAD"):
        return policy.redirect_status
    return 308 if permanent else 307


def _fill(template: str, tenant: str) -> str:
    return template.replace("{tenant}", tenant)


def _map_path(rules: tuple[PathRule, ...], tenant: str, path: str) -> str | None:
    for rule in rules:
        prefix = _fill(rule.legacy, tenant).rstrip("/")
        if path == prefix or path.startswith(prefix + "/") or (not prefix and path == "/"):
            return _fill(rule.new, tenant).rstrip("/") + path[len(prefix) :] or "/"
    return None


# What stays unescaped in a path and a query built from configuration and the request.
_PATH_SAFE = "/-._~!$&'()*+,;=:@"
_QUERY_SAFE = "/-._~!$&'()*+,;=:@?%"


def _with_query(location: str, query: str | bytes) -> str:
    return f"{location}?{quote(query, safe=_QUERY_SAFE)}" if query else location


def _clean_path(path: str) -> str:
    """Percent-encode and fold repeated slashes, so the path can never read as a host."""
    folded = "/" + "/".join(part for part in path.split("/") if part)
    if path.endswith("/") and folded != "/":
        folded += "/"
    return quote(folded, safe=_PATH_SAFE)


_RETIRED = Refuse(410, Reason.RETIRED, "The Parent Portal has been retired.")
_BLOCKED = Refuse(
    403, Reason.BLOCKED, "The new portal is in read-only preview: changes are not possible yet."
)
_NOT_ENABLED = Refuse(403, Reason.NOT_ENABLED, "The new portal is not enabled for this business.")
_MISCONFIGURED = Refuse(
    500, Reason.MISCONFIGURED, "This business's portal routing is misconfigured."
)
