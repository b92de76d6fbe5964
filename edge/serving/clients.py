"""The public listener's clients, bounded: how many, and how long each may keep edge waiting.

uvicorn has no deadline on a request head or body, nor on a client that stops reading its
response: its keep-alive timer is armed only after a response and cancelled by the next byte,
so a connection that sends nothing, a byte now and then, or reads nothing, is kept forever.
Here one server's connections share one timer that closes those whose head, body or reading
is overdue, and a count that turns new connections away with 503 beyond ``max_connections``
(edge.serving.protocol calls in at each step of a connection).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from uvicorn.server import ServerState

from edge.config import ServerSettings

_TICK_MIN, _TICK_MAX = 0.05, 1.0  # how often the timer looks for overdue connections


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one client connection may hold: the head's size, the deadlines, the connections."""

    url_bytes: int  # the request target: path and query
    header_bytes: int  # header names and values, all together
    headers: int  # header fields
    header_timeout: float  # a head must arrive whole within it
    body_idle_timeout: float  # a body may not stall longer
    keepalive_timeout: float  # idle between requests (uvicorn's own timer)
    send_timeout: float  # a response may wait this long for the client to read some of it
    max_connections: int  # per process; beyond it 503
    public_port: int  # max_connections turns away connections to this port only
    admin_port: int  # edge's own refusals are the admin API's JSON error on this port

    @classmethod
    def from_settings(
        cls, server: ServerSettings, admin_port: int, max_connections: int | None = None
    ) -> ClientLimits:
        return cls(
            server.max_url_bytes,
            server.max_header_bytes,
            server.max_headers,
            server.header_timeout,
            server.body_idle_timeout,
            server.keepalive_timeout,
            server.send_timeout,
            server.max_connections if max_connections is None else max_connections,
            server.port,
            admin_port,
        )


class Client(Protocol):
    """What the timer needs of a connection (edge.serving.protocol's)."""

    def head_overdue(self) -> None:
        """Past its head deadline; it may start the deadline again (a pipelined head)."""
        ...

    def body_overdue(self) -> None: ...

    def send_overdue(self) -> None: ...

    def client_turn(self) -> bool:
        """Is the body waiting on the client (not on edge reading it, nor on 100 Continue)?"""
        ...


class ClientStats(Collector):
    """What the limits did, for /metrics: one per process, every server adds to it."""

    def __init__(self) -> None:
        self.header_timeouts = 0  # closed: a head not whole in time (408 if any of it came)
        self.body_timeouts = 0  # closed: a body stalled (408 unless a response had started)
        self.send_timeouts = 0  # cut off: read none of its response for send_timeout
        self.turned_away = 0  # new connections answered 503: max_connections reached
        # Answered and closed before the app saw the request: a 414, a 431 (trailers too), a
        # 400 (llhttp's, or edge's for a head that could be read more than one way).
        self.refused = {400: 0, 414: 0, 431: 0}

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "edge_client_connections",
            "Client connections open, on every listener of this process.",
            value=sum(len(server.connections) for server in _SERVERS),
        )
        closed = CounterMetricFamily(
            "edge_client_connections_closed",
            "Client connections edge closed for a limit: a head not whole within "
            "header_timeout, a body stalled for body_idle_timeout, a response left unread for "
            "send_timeout, max_connections reached (answered 503), or a head refused before "
            "routing: 414, 431, or 400 for one that could not be read or read one way.",
            labels=("reason",),
        )
        closed.add_metric(("header_timeout",), self.header_timeouts)
        closed.add_metric(("body_idle_timeout",), self.body_timeouts)
        closed.add_metric(("send_timeout",), self.send_timeouts)
        closed.add_metric(("max_connections",), self.turned_away)
        for status, reason in _REFUSED.items():
            closed.add_metric((reason,), self.refused[status])
        yield closed


_REFUSED = {400: "bad_request", 414: "target_too_long", 431: "head_too_large"}
STATS = ClientStats()


class ClientConnections:
    """One server's client connections: the count, and the deadlines, on one timer.

    Every head deadline is as long as every other, so insertion order is due order, and a
    tick looks only at the entries that are due (as forwarding.proxy's watch list does); the same
    for bodies, whose entry moves to the end whenever more of the body arrives.
    """

    def __init__(self, limits: ClientLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.limits = limits
        self.loop = loop
        self.heads: dict[Client, float] = {}  # client → when its head is due
        self.bodies: dict[Client, float] = {}  # client → when more of its body is due
        self.sends: dict[Client, float] = {}  # client → when it must have read some more
        self.lingering = 0  # turned-away connections still open (edge.serving.protocol)
        shortest = min(limits.header_timeout, limits.body_idle_timeout, limits.send_timeout)
        self._tick = min(max(shortest / 10, _TICK_MIN), _TICK_MAX)
        self._timer: asyncio.TimerHandle | None = None

    def head_started(self, client: Client) -> None:
        self._due_in(self.heads, client, self.limits.header_timeout)

    def head_done(self, client: Client) -> None:
        self.heads.pop(client, None)

    def body_moved(self, client: Client) -> None:
        """More of the body came (or it is due from now): the idle deadline starts again."""
        self._due_in(self.bodies, client, self.limits.body_idle_timeout)

    def body_done(self, client: Client) -> None:
        self.bodies.pop(client, None)

    def send_stalled(self, client: Client) -> None:
        """Edge has stopped writing to the client: it has that much unread."""
        self._due_in(self.sends, client, self.limits.send_timeout)

    def send_moved(self, client: Client) -> None:
        self.sends.pop(client, None)

    def _due_in(self, deadlines: dict[Client, float], client: Client, seconds: float) -> None:
        deadlines.pop(client, None)  # to the end: the order stays the order they fall due
        deadlines[client] = self.loop.time() + seconds
        if self._timer is None:
            self._timer = self.loop.call_later(self._tick, self._sweep)

    def forget(self, client: Client) -> None:
        self.heads.pop(client, None)
        self.bodies.pop(client, None)
        self.sends.pop(client, None)

    def _sweep(self) -> None:
        now = self.loop.time()
        for client in _due(self.heads, now):
            del self.heads[client]
            client.head_overdue()
        for client in _due(self.bodies, now):
            if client.client_turn():
                del self.bodies[client]
                client.body_overdue()
            else:  # edge is not reading it: the client's deadline starts once edge does
                self.body_moved(client)
        for client in _due(self.sends, now):
            del self.sends[client]
            client.send_overdue()
        self._timer = None
        if self.heads or self.bodies or self.sends:
            self._timer = self.loop.call_later(self._tick, self._sweep)


def _due(deadlines: dict[Client, float], now: float) -> list[Client]:
    due = []
    for client, at in deadlines.items():
        if at > now:
            break
        due.append(client)
    return due


_SERVERS: weakref.WeakKeyDictionary[ServerState, ClientConnections] = weakref.WeakKeyDictionary()


def of_server(server_state: ServerState, limits: ClientLimits) -> ClientConnections:
    """The connections of one uvicorn server (its ServerState), created with its first."""
    connections = _SERVERS.get(server_state)
    if connections is None:
        connections = ClientConnections(limits, asyncio.get_running_loop())
        _SERVERS[server_state] = connections
    return connections
