"""The public listener: resolve, look the mode up, decide, then forward, redirect or refuse."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import product
from time import perf_counter

from edge.activation.traffic import Traffic
from edge.config import Settings
from edge.core.asgi import Receive, Scope, Send
from edge.core.http import METHOD_OVERRIDE_HEADERS, SAFE_METHODS
from edge.core.responses import asks_for_json, send_redirect, send_refusal
from edge.core.tenants import Front, Mode
from edge.forwarding.headers import UNNAMEABLE, Backend, ClientView, nominates
from edge.forwarding.proxy import Forwarder, UpstreamAborted
from edge.forwarding.websocket import WebSocketRelay, opening
from edge.modes import MISSING, ModeCache, StoreUnavailable
from edge.observe.logs import AccessLog
from edge.observe.metrics import Metrics
from edge.observe.served import FORWARD, REDIRECT, Served
from edge.routing.decide import (
    FORWARD_NEW,
    WEBSOCKET,
    Decision,
    Forward,
    Policy,
    Redirect,
    decide,
    effective_method,
    judged_method,
    refusal_home,
)
from edge.routing.preview import Grant, PreviewGate
from edge.routing.resolve import Resolver, is_safe_path

log = logging.getLogger("edge.router")

# What the one pass over a request's headers looks for, by name: one dict look-up a header,
# however many names are screened.
_HOST, _ENCODING, _LENGTH, _CONNECTION, _OVERRIDE, _REFERER, _TENANT = range(7)
_SCREENED = {
    b"host": _HOST,
    b"referer": _REFERER,
    b"transfer-encoding": _ENCODING,
    b"content-length": _LENGTH,
    b"connection": _CONNECTION,
    **dict.fromkeys((name.encode() for name in METHOD_OVERRIDE_HEADERS), _OVERRIDE),
}
# After a request whose framing could be read two ways, nothing more is read from its
# connection: the rest of it could be a request smuggled past a proxy in front of edge.
_CLOSE = ((b"connection", b"close"),)
_RETRY_AFTER = b"2"
# An Enum member read through its class costs several times a global's on Python 3.11.
_SETUP, _ACTIVE = Mode.SETUP, Mode.ACTIVE
_NEW = Front.NEW
# A mode's label for logs and metrics (one str each, so its hash is computed once) and its
# X-Edge-Mode header; None is a stored value that is not a mode.
_LABELS: dict[Mode | None, tuple[str, tuple[bytes, bytes]]] = {
    mode: (label, (b"x-edge-mode", label.encode()))
    for mode, label in [*((mode, mode.value) for mode in Mode), (None, "invalid")]
}


class Router:
    """Raw ASGI on purpose: this is every customer request, so no framework objects."""

    def __init__(
        self,
        settings: Settings,
        cache: ModeCache,
        forwarder: Forwarder,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        policy: Policy,
        preview: PreviewGate | None,
        metrics: Metrics | None = None,
        access_log: AccessLog | None = None,
        traffic: Traffic | None = None,
        websockets: WebSocketRelay,
    ) -> None:
        self.resolver = Resolver(settings)
        self.policy = policy
        self.cache = cache
        self.forwarder = forwarder
        self.websockets = websockets
        self.clock = clock
        self.metrics = metrics or Metrics(cache)
        self.access_log = access_log
        # Counts for safe activation; unflushed (and so bounded, then dropped) unless started.
        self.traffic = traffic or Traffic(cache.store, settings, keyed=cache.keyed)
        self.referrers = self.traffic.referrers
        self.shadow = self.traffic.shadow  # None when off: nothing to do per request
        self.preview = preview
        self.backends = {
            Front.LEGACY: Backend.from_settings(settings.legacy),
            Front.NEW: Backend.from_settings(settings.new),
        }
        tenant_headers = {r.header.encode() for r in self.resolver.fronts if r.rule == "header"}
        # Each spelling a backend may read as a tenant header ("_" for any "-"), by the header.
        self.tenant_spellings = {
            spelling: name for name in tenant_headers for spelling in _spellings(name)
        }
        # A tenant header named like a screened one (Host, say) stays what it is there.
        self.screened = dict.fromkeys(self.tenant_spellings, _TENANT) | _SCREENED
        self.unnameable = UNNAMEABLE | tenant_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # A WebSocket handshake is routed as a GET; HTTP never comes this way.
            if scope["type"] != "websocket" or not (opened := await opening(scope, receive, send)):
                return
            scope, send = opened
        started = perf_counter()
        view = self.forwarder.client_view(scope)
        served = Served(view.request_id, scope["method"], scope["path"], view.client_ip)
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            await self._route(scope, receive, send, view, served)
        except BaseException:
            if not served.status:
                served.status, served.reason = 500, "error"
            raise
        else:
            if self.shadow is not None:  # the customer has the whole answer by now
                self.shadow.offer(scope, served)
        finally:
            metrics.in_flight -= 1
            served.duration = perf_counter() - started
            metrics.observe(served)
            if self.access_log is not None:
                self.access_log.write(served)

    async def _route(
        self, scope: Scope, receive: Receive, send: Send, view: ClientView, served: Served
    ) -> None:
        host = b""
        hosts = 0
        overrides: tuple[str, ...] = ()
        encodings = 0  # Transfer-Encoding headers; 2 for one that is not exactly "chunked"
        body = nominated = False
        referer = b""
        underscored = 0  # headers not forwarded for the "_" in their name
        tenant_headers: list[tuple[bytes, bytes]] | None = None
        screened = self.screened
        for name, value in scope["headers"]:
            if b"_" in name:
                underscored += 1
            if name not in screened:  # most headers: an `in` costs less than a .get() call
                continue
            kind = screened[name]
            if kind == _HOST:
                host = value
                hosts += 1
            elif kind == _ENCODING:
                # Whitespace around a value is not part of it (RFC 9110 5.5), whichever
                # parser version trimmed it already.
                encodings += 1 if value.strip(b" \t").lower() == b"chunked" else 2
            elif kind == _LENGTH:
                body = value.strip(b"0") != b""  # the parser has checked it is all digits
            elif kind == _CONNECTION:
                nominated = nominated or nominates(value, self.unnameable)
            elif kind == _OVERRIDE:
                overrides += (value.decode("latin-1"),)
            elif kind == _REFERER:
                referer = value
            else:
                tenant_headers = tenant_headers or []
                tenant_headers.append((name, value))
        if underscored:
            self.metrics.underscored_headers += underscored
        if hosts != 1:
            message = "The request must carry exactly one Host header."
            return await _refuse(scope, send, served, 400, "bad_request", message, extra=_CLOSE)
        if encodings and (encodings > 1 or scope["http_version"] == "1.0"):
            # RFC 9112 6.1: anything but one "chunked" is framing a proxy may read otherwise.
            message = "The request's Transfer-Encoding is not acceptable."
            return await _refuse(scope, send, served, 400, "bad_request", message, extra=_CLOSE)
        if nominated:
            # Honoured, it would strip the body's framing, the Host or edge's own headers.
            message = "The request's Connection header names a header it may not."
            return await _refuse(scope, send, served, 400, "bad_request", message, extra=_CLOSE)
        method: str = scope["method"]
        if method == "CONNECT":
            return await _refuse(
                scope, send, served, 501, "bad_request", "CONNECT is not served here.", extra=_CLOSE
            )
        front = self.resolver.front[host]
        if front is None:
            return await _refuse(
                scope, send, served, 421, "unknown_host", "This site is not served here."
            )
        served.front = front.front
        path: str = scope["path"]
        raw_path: bytes = scope["raw_path"]
        if not is_safe_path(path, raw_path):
            return await _refuse(
                scope, send, served, 400, "bad_request", "The request path is not acceptable."
            )
        header = None
        if tenant_headers:
            own = front.header.encode() if front.rule == "header" else None
            copies = [sent for sent in tenant_headers if self.tenant_spellings[sent[0]] == own]
            if len(copies) > 1:
                # Judged by one copy, a portal could act on another.
                message = "The request names its business more than once."
                return await _refuse(scope, send, served, 400, "bad_request", message)
            if copies and copies[0][0] == own:  # a spelling with "_" is not forwarded
                header = copies[0][1]
            if len(copies) < len(tenant_headers):
                # Another front's tenant header names no one here, and a portal that read it
                # would act for that business: it stays behind.
                spellings = self.tenant_spellings
                scope["headers"] = [h for h in scope["headers"] if spellings.get(h[0], own) == own]
        tenant = front.tenant_of(host, path, header, raw_path)
        if tenant is None:
            return await _refuse(scope, send, served, 404, "no_tenant", "There is no such page.")
        served.tenant = tenant

        mode = self.cache.cached(tenant)
        if mode is MISSING:
            try:
                mode = await self.cache.load(tenant)
            except StoreUnavailable:
                return await _refuse(
                    scope,
                    send,
                    served,
                    503,
                    "store_unavailable",
                    "Routing is briefly unavailable; please retry.",
                    tenant,
                    extra=((b"retry-after", _RETRY_AFTER),),
                )
        mode_label, mode_header = _LABELS[mode]
        served.mode = mode_label
        if front.front is _NEW and mode is not _ACTIVE:
            # Where reads and writes part ways, whatever else makes a request a write counts:
            # a WebSocket, a body, an override in the query.
            method = judged_method(
                WEBSOCKET if scope["type"] == "websocket" else method,
                overrides,
                query=scope["query_string"],
                body=body or encodings > 0,
            )
        elif overrides:
            method = effective_method(method, overrides)
        grant: Grant | None = None
        holder = False
        if (
            self.preview is not None
            and mode is _SETUP
            and front.front is Front.NEW
            and method in SAFE_METHODS
        ):
            now = self.clock()
            grant = self.preview.grant(tenant, path, scope["query_string"], now)
            holder = grant is None and self.preview.holds(tenant, scope["headers"], now)
        decision: Decision = (
            # A preview link: its cookie is set on the way to the same page without the link.
            Redirect(grant.location, 302)
            if grant is not None
            else decide(
                front.front,
                tenant,
                mode,
                method,
                path,
                scope["query_string"],
                self.clock,
                self.policy,
                holder,
            )
        )

        if isinstance(decision, Forward):
            edge_headers = [
                (b"x-edge-tenant", tenant.encode()),
                mode_header,
            ]
            act = self.forwarder.forward if scope["type"] == "http" else self.websockets.relay
            backend = self.backends[decision.front]
            if backend.per_tenant:  # asked first: for_tenant is a call even when it fills nothing
                backend = backend.for_tenant(tenant)
            # Logged as forwarded however it ends: the portal may have the request already.
            served.decision = FORWARD
            try:
                outcome = await act(scope, receive, send, backend, edge_headers, view)
            except UpstreamAborted as exc:
                served.forwarded(exc.outcome, aborted=True)
                # Returning with the response unfinished makes the server cut the connection,
                # so no client takes a truncated body for a whole one; uvicorn notes it in one
                # line, where a raised exception would log a traceback.
                log.warning("%s: the portal failed mid-response: %s", view.request_id, exc)
                return
            served.forwarded(outcome)
            if decision is FORWARD_NEW:
                if mode is _SETUP or tenant in self.traffic.watched:
                    self.traffic.response(tenant, mode_label, outcome.status)
                return
            if referer:
                self.referrers.seen(tenant, referer)
            if method == "GET" and 200 <= outcome.status < 300 and scope["type"] == "http":
                self.traffic.deep_link(tenant, path)
        elif isinstance(decision, Redirect):
            served.decision, served.status = REDIRECT, decision.status
            served.bytes = await send_redirect(
                send,
                decision.location,
                decision.status,
                headers=[
                    (b"x-request-id", served.request_id.encode()),
                    mode_header,
                    *([(b"set-cookie", grant.set_cookie)] if grant else []),
                ],
                head_only=scope["method"] == "HEAD",
            )
            if front.front is not _NEW:  # an active tenant's legacy URL: an old link
                self.referrers.legacy_hit(tenant)
                if referer:
                    self.referrers.seen(tenant, referer)
        else:
            await _refuse(
                scope,
                send,
                served,
                decision.status,
                decision.reason.value,
                decision.message,
                tenant,
                mode_label,
                home=refusal_home(self.policy, decision.reason, tenant, mode, self.clock()),
            )


def _spellings(name: bytes) -> list[bytes]:
    """``name`` with each "-" as "-" or "_": "x-tenant", "x_tenant"."""
    first, *rest = name.split(b"-")
    return [
        first + b"".join(dash + part for dash, part in zip(dashes, rest, strict=True))
        for dashes in product((b"-", b"_"), repeat=len(rest))
    ]


async def _refuse(
    scope: Scope,
    send: Send,
    served: Served,
    status: int,
    reason: str,
    message: str,
    tenant: str | None = None,
    mode: str | None = None,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    home: tuple[Front, str] | None = None,
) -> None:
    """edge's own refusal of a request, in JSON or HTML as its Accept asks."""
    served.status, served.reason = status, reason
    served.bytes = await send_refusal(
        send,
        status,
        message,
        tenant=tenant,
        mode=mode,
        # Accept is looked for here, not in the router's pass over the headers: most requests
        # are not refused.
        as_json=asks_for_json(scope["headers"]),
        headers=[(b"x-request-id", served.request_id.encode()), *extra],
        head_only=scope["method"] == "HEAD",
        home=home,
    )
