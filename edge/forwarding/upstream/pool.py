"""The pool: keep-alive connections per origin, the places they hold, the queues waiting for
one, and the one timer per pool that finds overdue reads and idle connections to close."""

from __future__ import annotations

import asyncio
import collections

from edge.config import UpstreamSettings
from edge.forwarding.upstream.connection import Connection
from edge.forwarding.upstream.errors import UpstreamConnectError, UpstreamTimeout
from edge.forwarding.upstream.origin import Origin

_TICK_MIN, _TICK_MAX = 0.01, 1.0  # how often the pool's one timer looks for overdue reads


class UpstreamPool:
    """Keep-alive connections to the portals, per origin, within the configured limits.

    Each portal holds at most ``places_per_portal`` of the pool's places and has its own queue
    of requests waiting for one, so that a portal that hangs holds up only its own front.
    """

    def __init__(self, settings: UpstreamSettings) -> None:
        self.read_timeout = settings.read_timeout
        self.stream_idle_timeout = settings.stream_idle_timeout
        self.connect_timeout = settings.connect_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.max_head_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.limit = settings.pool_size
        self.limit_per_origin = settings.places_per_portal
        self._idle: dict[Origin, collections.deque[Connection]] = {}  # oldest first
        self._busy: set[Connection] = set()
        self._open: collections.Counter[Origin] = collections.Counter()
        self._total = 0
        self._waiters: dict[Origin, collections.deque[asyncio.Future[None]]] = {}
        self._tracked: dict[Connection, None] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._reaper: asyncio.TimerHandle | None = None
        shortest = min(t for t in (self.read_timeout, self.stream_idle_timeout) if t > 0)
        self._tick = min(max(shortest / 10, _TICK_MIN), _TICK_MAX)

    async def acquire(self, origin: Origin, fresh: bool = False) -> Connection:
        """A pooled connection to the origin (unless ``fresh``), or a new one; while the
        origin has no place, waits for one in its queue (within connect_timeout)."""
        if not fresh and (connection := self._reuse(origin)) is not None:
            return connection
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                while not self._room_for(origin):
                    if self._open[origin] < self.limit_per_origin and self._close_an_idle_one():
                        continue  # the pool is full, but for an idle connection: it makes way
                    await self._wait_turn(origin, loop)
                    if not fresh and (connection := self._reuse(origin)) is not None:
                        return connection
                self._open[origin] += 1
                self._total += 1
                connection = Connection(self, origin)
                try:
                    await loop.create_connection(
                        lambda: connection, origin.host, origin.port, ssl=origin.tls
                    )
                except BaseException:
                    self.retire(connection)
                    raise
        except TimeoutError:
            raise UpstreamTimeout(
                f"no connection to {origin.host}:{origin.port} in {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:  # ssl.SSLError included: a certificate that does not verify
            raise UpstreamConnectError(
                f"cannot connect to {origin.host}:{origin.port}: {exc.strerror or exc}"
            ) from None
        self._busy.add(connection)
        return connection

    def release(self, connection: Connection) -> None:
        """Back to the pool if it can carry another exchange; else closed."""
        self.untrack(connection)
        self._busy.discard(connection)
        if connection.reusable():
            loop = asyncio.get_running_loop()
            connection.idle_since = loop.time()
            self._idle.setdefault(connection.origin, collections.deque()).append(connection)
            if self._reaper is None:
                self._reaper = loop.call_later(self.keepalive_timeout, self._reap)
            if self._waiters:
                self._wake(connection.origin)
        else:
            connection.close()
            self.retire(connection)

    def retire(self, connection: Connection) -> None:
        """A connection closed, by either side: its place in the pool is free."""
        if not connection.counted:
            return
        connection.counted = False
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        self._open[connection.origin] -= 1
        self._total -= 1
        if self._waiters:
            self._wake(connection.origin)

    def track(self, connection: Connection) -> None:
        """Time the connection's waits on its portal until release."""
        self._tracked[connection] = None
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._tick, self._sweep)

    def untrack(self, connection: Connection) -> None:
        self._tracked.pop(connection, None)

    async def close(self) -> None:
        for connection in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            connection.close()
            self.retire(connection)
        self._busy.clear()
        self._idle.clear()
        for timer in (self._sweeper, self._reaper):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._reaper = None

    def _reuse(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        expired = asyncio.get_running_loop().time() - self.keepalive_timeout
        while idle:
            connection = idle.pop()
            if connection.closed or connection.idle_since < expired:
                connection.close()
                self.retire(connection)
                continue
            self._busy.add(connection)
            return connection
        return None

    async def _wait_turn(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        """Wait in the origin's queue until a place or an idle connection may be there."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(origin, collections.deque()).append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake(origin)  # woken, but leaving (timed out): the turn goes on
            raise

    def _wake(self, origin: Origin) -> None:
        """A place or an idle connection came free at ``origin``: the first in its queue goes
        on; if none waits there, the first for another origin that has room of its own."""
        if self._wake_first(origin):
            return
        for other in list(self._waiters):
            if self._open[other] < self.limit_per_origin and self._wake_first(other):
                return

    def _wake_first(self, origin: Origin) -> bool:
        queue = self._waiters.get(origin)
        if queue is None:
            return False
        woken = False
        while queue and not woken:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                woken = True
        if not queue:
            del self._waiters[origin]
        return woken

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [c for c in self._tracked if c.overdue(now)]:
            self.untrack(connection)
            connection.time_out()
        self._sweeper = loop.call_later(self._tick, self._sweep) if self._tracked else None

    def _reap(self) -> None:
        """Close the connections idle for keepalive_timeout, before the portal closes them."""
        loop = asyncio.get_running_loop()
        expired = loop.time() - self.keepalive_timeout
        oldest: float | None = None
        for idle in self._idle.values():
            while idle and idle[0].idle_since <= expired:
                connection = idle.popleft()
                connection.close()
                self.retire(connection)
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        self._reaper = (
            None if oldest is None else loop.call_at(oldest + self.keepalive_timeout, self._reap)
        )

    def _room_for(self, origin: Origin) -> bool:
        return self._total < self.limit and self._open[origin] < self.limit_per_origin

    def _close_an_idle_one(self) -> bool:
        """Make room by closing the longest idle connection, if there is one."""
        for idle in self._idle.values():
            if idle:
                connection = idle.popleft()
                connection.close()
                self.retire(connection)
                return True
        return False
