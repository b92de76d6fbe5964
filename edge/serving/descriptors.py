"""File descriptors: edge takes all its hard limit allows, and fits its connections into it.

Every socket is a descriptor: each client connection, each portal connection, each Redis one.
A process that runs out cannot accept, nor connect to a portal, and its customers get 502s.
So at start edge raises its soft RLIMIT_NOFILE to the hard limit, and if even that is too few
for ``[server].max_connections``, it takes fewer connections, so that a client beyond them
gets 503 while descriptors are still left for the portals.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from pathlib import Path

from edge.config import Settings
from edge.serving.protocol import LINGER_MAX

log = logging.getLogger("edge")

# Listeners, Redis (redis-py's pool holds up to 100, plus the event subscription), the access
# log, readiness checks, the event loop's own: what a process holds apart from its connections.
RESERVE = 256


@dataclass(frozen=True)
class Descriptors:
    before: int  # the soft limit edge was started with
    limit: int  # the soft limit now
    needed: int  # what a worker needs at the configured max_connections
    connections: int  # the max_connections each worker keeps to

    def summary(self) -> dict[str, int]:
        """For the start-up log line."""
        return {
            "limit": self.limit,
            "raised_from": self.before,
            "needed": self.needed,
            "max_connections": self.connections,
        }

    def shortfall(self, configured: int) -> str:
        raised = f" (raised from {self.before})" if self.limit > self.before else ""
        return (
            f"file descriptors: {self.limit}{raised}, too few for max_connections {configured} "
            f"(each worker needs up to {self.needed}): each worker takes {self.connections} "
            f"connections, beyond which new ones get 503. Raise the hard limit to at least "
            f"{self.needed} (systemd LimitNOFILE=, docker --ulimit nofile=)"
        )


def needed(settings: Settings, connections: int) -> int:
    """Descriptors a worker may hold with ``connections`` clients: each client's, the portal
    pool's, a portal WebSocket for each client's WebSocket, the 503s still lingering, the rest."""
    websockets = min(settings.websocket.max_connections, connections)
    return connections + websockets + settings.upstream.pool_size + LINGER_MAX + RESERVE


def fitting(settings: Settings, limit: int) -> int:
    """The most client connections (up to the configured) whose descriptors fit ``limit``."""
    left = limit - needed(settings, 0)
    websockets = settings.websocket.max_connections
    most = left - websockets if left >= 2 * websockets else left // 2
    return max(1, min(settings.server.max_connections, most))


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:  # the kernel's own ceiling stands in for "unlimited"
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


def at_start(settings: Settings) -> Descriptors:
    """Take the hard limit and fit the connections to it; warn when even that is too few.
    What it has goes into the start-up log line."""
    before, limit = raise_soft_limit()
    configured = settings.server.max_connections
    descriptors = Descriptors(before, limit, needed(settings, configured), fitting(settings, limit))
    if descriptors.connections != configured:
        log.warning(descriptors.shortfall(configured))
    return descriptors
