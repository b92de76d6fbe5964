"""Who still links to the legacy portal: the outside pages in the Referer of its requests.

The router hands over the Referer of each legacy-front request it forwards or redirects. Most
name a page of the portals themselves (a customer clicking on); those are left out on the
request path by a prefix test that allocates nothing, and the rest only for tenants with a
routing key (a set look-up in the mode cache), so a made-up tenant id costs nothing. What is
left is one dict operation, bounded per tenant and in all between two flushes; the traffic
flush then cleans each page up (no query, no fragment, no credentials; http and https only;
the portals' own hosts in any spelling left out) and adds the counts to the store, which keeps
the most frequent REFERRERS_KEPT * KEEP_SLACK per tenant.

Active tenants' legacy-portal requests (each a redirect) are counted per day beside them, so
ops see when the old links die down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edge.config import FrontSettings, Settings
from edge.modes import ModeStore
from edge.modes.traffic import KEEP_SLACK, REFERRERS_KEPT, RETENTION_SECONDS

# A Referer longer than this is not a page anyone links from; it is dropped.
MAX_REFERER = 1024
# Distinct pages held per tenant, and in all, between two flushes; beyond, new ones are dropped.
PENDING_PER_TENANT = REFERRERS_KEPT * KEEP_SLACK
MAX_PENDING = 10_000


def own_hosts(settings: Settings) -> tuple[frozenset[str], tuple[str, ...]]:
    """The portals' host names (lower-case, no port) and the suffixes of their wildcards."""
    exact: set[str] = set()
    suffixes: list[str] = []
    for front in (settings.legacy, settings.new):
        for host in (*front.hosts, _public_host(front)):
            name = host.lower().rpartition("@")[2].partition(":")[0]  # config hosts: no IPv6
            if name.startswith("*."):
                suffixes.append(name[1:])
            elif "{tenant}" in name:
                suffixes.append(name.partition("{tenant}")[2])
            else:
                exact.add(name)
    return frozenset(exact), tuple(suffixes)


def _public_host(front: FrontSettings) -> str:
    return front.public_url.split("://", 1)[1].split("/", 1)[0]


def clean(referer: str, exact: frozenset[str], suffixes: tuple[str, ...]) -> str | None:
    """The page a Referer names, as it is counted; None for one not to count."""
    try:
        parts = urlsplit(referer)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    if host in exact or host.endswith(suffixes):
        return None
    name = f"[{host}]" if ":" in host else host
    netloc = name if port is None else f"{name}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))


class Referrers:
    def __init__(self, settings: Settings, keyed: Callable[[str], bool]) -> None:
        self.exact, self.suffixes = own_hosts(settings)
        # The request path's quick test: how a browser writes the portals' own pages.
        hosts = {*settings.legacy.hosts, *settings.new.hosts, *self.exact}
        self.own = tuple(
            f"{scheme}://{host}/".encode()
            for host in sorted(hosts)
            if not host.startswith("*.")
            for scheme in ("http", "https")
        )
        self.keyed = keyed
        self.dropped = 0  # pages not counted: too many distinct ones between two flushes
        self._pending: dict[str, dict[bytes, int]] = {}
        self._distinct = 0
        self._legacy_hits: dict[str, int] = {}

    def seen(self, tenant: str, referer: bytes) -> None:
        """A legacy-front request with this Referer. On the request path."""
        if referer.startswith(self.own) or len(referer) > MAX_REFERER or not self.keyed(tenant):
            return
        pages = self._pending.get(tenant)
        if pages is None:
            if self._distinct >= MAX_PENDING:
                self.dropped += 1
                return
            pages = self._pending[tenant] = {}
        count = pages.get(referer)
        if count is not None:
            pages[referer] = count + 1
        elif len(pages) < PENDING_PER_TENANT and self._distinct < MAX_PENDING:
            pages[referer] = 1
            self._distinct += 1
        else:
            self.dropped += 1

    def legacy_hit(self, tenant: str) -> None:
        """An active tenant's legacy-portal request (redirected). One dict operation."""
        hits = self._legacy_hits
        hits[tenant] = hits.get(tenant, 0) + 1

    def take(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """The pages counted since the last take, cleaned up, and the legacy hits."""
        pending, self._pending, self._distinct = self._pending, {}, 0
        hits, self._legacy_hits = self._legacy_hits, {}
        referrers: dict[str, dict[str, int]] = {}
        for tenant, pages in pending.items():
            for page, count in self._cleaned(pages.items()):
                counted = referrers.setdefault(tenant, {})
                counted[page] = counted.get(page, 0) + count
        return referrers, hits

    def _cleaned(self, pages: Iterable[tuple[bytes, int]]) -> Iterable[tuple[str, int]]:
        for raw, count in pages:
            page = clean(raw.decode("latin-1"), self.exact, self.suffixes)
            if page is not None:
                yield page, count


async def referrers_report(store: ModeStore, tenant: str) -> dict[str, Any]:
    """The API's and the CLI's answer: the outside pages, most requests first."""
    pages = await store.referrers(tenant, REFERRERS_KEPT)
    return {
        "tenant": tenant,
        "referrers": [
            {"referrer": page, "hits": hits, "last_seen": at.isoformat()}
            for page, hits, at in pages
        ],
    }


def referrer_lines(report: dict[str, Any]) -> list[str]:
    """The CLI's table of a referrers report."""
    if not report["referrers"]:
        return [f"{report['tenant']}: no outside page has sent customers to the legacy portal"]
    lines = [f"{'hits':>8}  {'last seen':<20}  referrer"]
    for entry in report["referrers"]:
        seen = entry["last_seen"][:19].replace("T", " ")
        lines.append(f"{entry['hits']:>8}  {seen:<20}  {entry['referrer']}")
    return lines


async def legacy_days(store: ModeStore, tenant: str, today: date) -> list[tuple[str, int]]:
    """An active tenant's legacy-portal requests per day since its activation (the last
    RETENTION_SECONDS' days at most); [] for a tenant not activated through edge."""
    activated = await store.activated_at(tenant)
    if activated is None:
        return []
    first = max(activated.date(), today - timedelta(seconds=RETENTION_SECONDS))
    days = [(first + timedelta(days=n)).isoformat() for n in range((today - first).days + 1)]
    return list(zip(days, await store.legacy_hits(tenant, days), strict=True))
