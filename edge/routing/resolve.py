"""Resolve: Host and path → the front a request came in on, and its tenant. Pure."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from edge.config import FrontSettings, Settings
from edge.core.memo import Memo
from edge.core.tenants import VALID_TENANT_IDS, Front

# What a decoded path must never hold: it could change the tenant or dodge a rule once a
# backend normalises it. Dot segments (also "..;", which Tomcat reads as ".."), back slashes,
# control bytes.
_UNSAFE_PATH = re.compile(r"(^|/)\.{1,2}(/|;|$)|\\|[\x00-\x1f\x7f]")
# Once percent-decoded, never anything still percent-encoded: a backend that decodes twice
# would read something else ("%252e" is "%2e" to edge, "." to it), IIS's "%u" form included.
_STILL_ENCODED = re.compile(r"%(?:[0-9a-fA-F]{2}|[uU])")
# What the path as sent must never hold: an encoded slash or back slash is one segment to edge
# and two to a backend that decodes before it routes; a "%" that does not start two hex digits
# ("%u002e", "%2") is no encoding at all, and each backend makes of it what it will.
_UNSAFE_ENCODING = re.compile(rb"%2[fF]|%5[cC]|%(?![0-9a-fA-F]{2})")
# Looked for in bytes as an int: ``b"%" in raw`` goes through the buffer protocol, 6x slower.
_PERCENT = ord("%")


def is_safe_path(path: str, raw_path: bytes) -> bool:
    """True when the decoded path and the path as sent cannot name different things.

    No dot segment, encoded or back slash, double or malformed encoding or control byte,
    also once a backend applies Unicode compatibility normalisation (full-width dots and
    slashes); and what was percent-encoded is UTF-8, for an overlong form ("%c0%ae") is a dot
    to a lenient decoder and U+FFFD to edge's.
    """
    if path[:1] != "/":
        return False
    if _PERCENT not in raw_path:
        # Nothing was decoded, and the parser refuses control and non-ASCII bytes in a request
        # target: only a dot segment or a back slash can be wrong (most paths have neither).
        return ("/." not in path and "\\" not in path) or _UNSAFE_PATH.search(path) is None
    return (
        _UNSAFE_PATH.search(path) is None
        and _UNSAFE_ENCODING.search(raw_path) is None
        and _STILL_ENCODED.search(path) is None
        and (
            path.isascii()
            or (
                _UNSAFE_PATH.search(unicodedata.normalize("NFKC", path)) is None
                # The server decodes with errors="replace": only then can it have hidden any.
                and ("\ufffd" not in path or _is_utf8(unquote_to_bytes(raw_path)))
            )
        )
    )


def _is_utf8(data: bytes) -> bool:
    """Strictly: Python refuses overlong forms and surrogates, as RFC 3629 asks."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class FrontRule:
    front: Front
    exact_hosts: frozenset[str]
    wildcard_suffixes: tuple[str, ...]
    rule: str
    header: str

    @classmethod
    def from_settings(cls, front: Front, settings: FrontSettings) -> FrontRule:
        return cls(
            front=front,
            exact_hosts=frozenset(h for h in settings.hosts if not h.startswith("*.")),
            wildcard_suffixes=tuple(h[1:] for h in settings.hosts if h.startswith("*.")),
            rule=settings.tenant,
            header=settings.tenant_header.lower(),
        )

    def subdomain_of(self, host: str) -> str | None:
        """The single label that a wildcard host stands for, or None."""
        for suffix in self.wildcard_suffixes:
            if host.endswith(suffix):
                label = host[: -len(suffix)]
                if label and "." not in label:
                    return label
        return None

    def tenant_of(
        self, host: bytes, path: str, header: bytes | None, raw_path: bytes = b""
    ) -> str | None:
        """The tenant id by this front's rule, or None when absent or malformed.

        ``host`` and ``header`` are as the client sent them; ``path`` is decoded, and starts
        with "/" (``is_safe_path`` has passed it).

        By the path rule the segment must be sent as it is: a percent-encoded one ("%61cme")
        would name the tenant to edge and something else to a backend routing on the raw path.
        """
        if self.rule == "path":
            candidate = path.split("/", 2)[1]  # the path starts with "/"
            if _PERCENT in raw_path and _PERCENT in raw_path[1:].partition(b"/")[0]:
                return None
        elif self.rule == "subdomain":
            candidate = self.subdomain_of(_without_port(host.decode("latin-1").lower())) or ""
        else:
            candidate = (header or b"").decode("latin-1").strip()
        return candidate if VALID_TENANT_IDS[candidate] else None


class Resolver:
    """Finds the front of a Host header; each front then finds the tenant by its rule."""

    def __init__(self, settings: Settings) -> None:
        self.fronts = (
            FrontRule.from_settings(Front.LEGACY, settings.legacy),
            FrontRule.from_settings(Front.NEW, settings.new),
        )
        self._by_host: dict[str, FrontRule] = {}
        for rule in self.fronts:
            self._by_host.update(dict.fromkeys(rule.exact_hosts, rule))
        # The front for a Host header value as sent (any case, with or without a port). The
        # distinct values remembered are few; a flood of made-up ones starts them over.
        self.front: Memo[bytes, FrontRule | None] = Memo(self._find, 1024)

    def _find(self, sent: bytes) -> FrontRule | None:
        host = sent.decode("latin-1").lower()
        rule = self._by_host.get(host)
        if rule is not None:
            return rule
        name = _without_port(host)
        rule = self._by_host.get(name)
        if rule is not None:
            return rule
        for candidate in self.fronts:
            if candidate.subdomain_of(name) is not None:
                return candidate
        return None


def _without_port(host: str) -> str:
    """The name in a Host value; "" when what follows it is not a port. A backend that builds
    links from Host would make "portal.test:@evil.test" a link to evil.test."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name, port = name + "]", rest.removeprefix(":")
        if rest[:1] not in ("", ":"):
            return ""
    elif ":" in host:
        name, _, port = host.rpartition(":")
    else:
        return host
    return name if port.isascii() and (port.isdigit() or not port) else ""
