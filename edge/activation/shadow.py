"""Shadow parity: a sample of setup tenants' legacy reads, asked again of the new portal.

With ``[shadow] sample_rate`` above 0, that share of a setup tenant's plain reads on the legacy
front (GET or HEAD, forwarded and answered, no body, no method override) is mirrored once the
customer has the legacy portal's whole answer: the router offers it after its response has
ended, and a bounded queue hands it to a few workers (``[shadow] queue`` and ``concurrency``);
a mirror that finds the queue full is dropped and counted. The customer never waits on one.

A mirror is a new request, never a relayed one: the same method (GET or HEAD) at the mapped
path (the path rules' legacy → new mapping, the query kept), no body, and of the customer's
headers only Accept, Accept-Language and User-Agent. Nothing else crosses: no Cookie,
Authorization, Proxy-Authorization, API-key header or any other credential whatever its name,
and no forwarding headers naming the customer. It carries ``X-Edge-Shadow: 1`` and
``X-Edge-Mode: setup`` with the tenant, as a preview read. It goes out through the
forwarder's own pooled client, so it costs what a forwarded request costs, and holds at most
``concurrency`` places in the new portal's pool.

Compared: the status class of the two answers, per legacy path, and the latency of each portal
(the legacy one as forwarding measured it, sending to last byte). The counts go to the store
with the traffic flush, so every process and instance adds to one picture (edge.modes.traffic).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.activation.readiness import NewPortalPages
from edge.config import Settings
from edge.core.asgi import Message, Scope
from edge.core.background import Background
from edge.core.http import METHOD_OVERRIDE_HEADERS
from edge.core.tenants import Front, Mode
from edge.forwarding.headers import Backend, ClientView
from edge.forwarding.proxy import Forwarder, UpstreamAborted
from edge.modes.traffic import (
    DISAGREEMENTS_KEPT,
    KEEP_SLACK,
    MAX_PATH,
    Disagreement,
    ParityCounts,
    latency_bucket,
    status_class,
)
from edge.observe.served import FORWARD, Served

log = logging.getLogger("edge.shadow")

MIRRORED_METHODS = frozenset({"GET", "HEAD"})
# The customer's headers a mirror carries: what shapes the page, nothing that names anyone.
CARRIED = frozenset({b"accept", b"accept-language", b"user-agent"})
# A request with one of these is not a plain read: it is never mirrored.
_NOT_PLAIN = frozenset({b"transfer-encoding", *(name.encode() for name in METHOD_OVERRIDE_HEADERS)})
_SETUP = Mode.SETUP.value
_EDGE_HEADERS = ((b"x-edge-mode", _SETUP.encode()), (b"x-edge-shadow", b"1"))
# Disagreements, and paths found fixed, held per tenant between two flushes.
PENDING_DISAGREEMENTS = DISAGREEMENTS_KEPT * KEEP_SLACK
PENDING_FIXED = 1_000


@dataclass(frozen=True, slots=True)
class Mirror:
    tenant: str
    method: str
    path: str  # the legacy path, decoded, as the router saw it
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # the carried ones
    request_id: str
    legacy_status: int
    legacy_ms: float


def plain_read(scope: Scope) -> bool:
    """No body, no override, no WebSocket: a read the legacy portal cannot have taken for
    anything else."""
    if scope["type"] != "http" or b"_method" in scope["query_string"]:
        return False
    for name, value in scope["headers"]:
        if name in _NOT_PLAIN or (name == b"content-length" and value.strip(b"0")):
            return False
    return True


class Shadow(Collector):
    def __init__(
        self,
        settings: Settings,
        forwarder: Forwarder,
        pages: NewPortalPages,
        sample: Callable[[], float] = random.random,
    ) -> None:
        shadow = settings.shadow
        self.rate = shadow.sample_rate
        self.concurrency = shadow.concurrency
        self.timeout = shadow.timeout
        self.forwarder = forwarder
        self.pages = pages
        self.backend = Backend.from_settings(settings.new)
        self.sample = sample
        self.queue: asyncio.Queue[Mirror] = asyncio.Queue(maxsize=shadow.queue)
        self.mirrored = self.dropped = self.unanswered = 0
        self._pending: dict[str, ParityCounts] = {}
        self._background = Background("shadow")

    def offer(self, scope: Scope, served: Served) -> None:
        """A request the router has answered in full: queued for mirroring if it is a sampled
        plain read of a setup tenant on the legacy front. Never waits."""
        if (
            served.mode != _SETUP
            or served.front is not Front.LEGACY
            or served.decision != FORWARD
            or served.reason is not None  # failed or the client left: nothing to compare
            or served.method not in MIRRORED_METHODS
            or served.status == 304  # a conditional answer: the mirror asks unconditionally
            or served.tenant is None
            or len(served.path) > MAX_PATH
            or served.upstream_seconds is None
            or self.sample() >= self.rate
            or not plain_read(scope)
        ):
            return
        mirror = Mirror(
            served.tenant,
            served.method,
            served.path,
            scope["query_string"],
            tuple((name, value) for name, value in scope["headers"] if name in CARRIED),
            served.request_id,
            served.status,
            served.upstream_seconds * 1000,
        )
        try:
            self.queue.put_nowait(mirror)
        except asyncio.QueueFull:
            self.dropped += 1

    async def start(self) -> None:
        self._background.start(*([self._work] * self.concurrency))

    async def stop(self) -> None:
        """Stop mirroring; what waits in the queue is dropped (not counted as compared)."""
        await self._background.stop()

    async def _work(self) -> None:
        while True:
            mirror = await self.queue.get()
            try:
                await self.mirror(mirror)
            except Exception:
                log.exception("%s: the shadow request failed", mirror.request_id)

    async def mirror(self, mirror: Mirror) -> None:
        new_path = self.pages.new_path(mirror.tenant, mirror.path)
        public = urlsplit(self.pages.new_page(mirror.tenant, "/"))
        host = ((b"host", public.netloc.encode()),) if self.backend.keep_host else ()
        scope: Scope = {
            "type": "http",
            "http_version": "1.1",
            "method": mirror.method,
            "path": new_path,
            "raw_path": new_path.encode(),
            "query_string": mirror.query,
            "headers": [*mirror.headers, *host],
            "client": None,  # no X-Forwarded-For: the mirror names no customer
        }
        view = ClientView("", public.scheme, public.netloc, mirror.request_id)
        answered: list[int] = []
        tenant = [(b"x-edge-tenant", mirror.tenant.encode()), *_EDGE_HEADERS]
        try:
            async with asyncio.timeout(self.timeout):
                outcome = await self.forwarder.forward(
                    scope, _no_body(), _heard(answered), self.backend, tenant, view
                )
        except (TimeoutError, UpstreamAborted) as exc:
            self.unanswered += 1
            log.debug("%s: no whole answer to the shadow request: %s", mirror.request_id, exc)
            return self._compare(mirror, new_path, 0, 0.0)
        # A failure is answered by edge itself (502, 504) with an error: no answer from the portal.
        status = answered[0] if answered and outcome.error is None else 0
        if not status:
            self.unanswered += 1
        self._compare(mirror, new_path, status, outcome.upstream_seconds * 1000)

    def _compare(self, mirror: Mirror, new_path: str, status: int, new_ms: float) -> None:
        self.mirrored += 1
        legacy_class = status_class(mirror.legacy_status)
        counts = self._pending.setdefault(mirror.tenant, ParityCounts())
        counts.mirrored += 1
        if status and status_class(status) == legacy_class:
            counts.agreeing += 1
            if len(counts.fixed) < PENDING_FIXED and not any(
                key.path == mirror.path for key in counts.disagreeing
            ):
                counts.fixed.add(mirror.path)
        else:
            counts.fixed.discard(mirror.path)
            key = Disagreement(mirror.path, new_path, mirror.legacy_status, status)
            held = counts.disagreeing
            if key in held or len(held) < PENDING_DISAGREEMENTS:
                held[key] = held.get(key, 0) + 1
        for portal, ms in (("legacy", mirror.legacy_ms), ("new", new_ms)):
            if portal == "new" and not status:
                continue  # a timeout is not a latency
            buckets = counts.latency.setdefault(portal, {})
            index = latency_bucket(ms)
            buckets[index] = buckets.get(index, 0) + 1

    def take(self) -> dict[str, ParityCounts]:
        """The comparisons since the last take."""
        pending, self._pending = self._pending, {}
        return pending

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "edge_shadow_mirrored",
            "Legacy reads mirrored to the new portal and compared.",
            value=self.mirrored,
        )
        yield CounterMetricFamily(
            "edge_shadow_dropped",
            "Reads sampled for mirroring but dropped: the shadow queue was full.",
            value=self.dropped,
        )
        yield CounterMetricFamily(
            "edge_shadow_unanswered",
            "Mirrored reads the new portal did not answer (refused, timed out).",
            value=self.unanswered,
        )
        yield GaugeMetricFamily(
            "edge_shadow_queued", "Mirrors waiting for a worker.", value=self.queue.qsize()
        )


def _no_body() -> Callable[[], Awaitable[Message]]:
    """A client that sent no body and then waits, connected, until the exchange ends."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # cancelled when the exchange ends
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    return receive


def _heard(statuses: list[int]) -> Callable[[Message], Awaitable[None]]:
    """A client that notes the answer's status and reads its body away."""

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    return send
