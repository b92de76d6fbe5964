"""Run edge under uvicorn: bind the listeners, then serve in one process or several workers."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from edge.config import Settings, redacted_url
from edge.core.asgi import ASGIApp
from edge.forwarding.websocket import WebSocketProtocol
from edge.modes import ModeStore
from edge.observe import logs
from edge.serving import descriptors
from edge.serving.clients import ClientLimits
from edge.serving.protocol import protocol

log = logging.getLogger("edge.server")


@dataclass(frozen=True)
class Listener:
    host: str
    port: int


def bind(listener: Listener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listener.host, listener.port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {listener.host}:{listener.port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def with_bound_ports(settings: Settings, public: socket.socket, admin: socket.socket) -> Settings:
    """Settings whose ports are the ones really bound (a configured port 0 picks a free one)."""
    return settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"port": public.getsockname()[1]}),
            "admin": settings.admin.model_copy(update={"port": admin.getsockname()[1]}),
        }
    )


def uvicorn_config(
    settings: Settings, app: ASGIApp | str, max_connections: int | None = None
) -> uvicorn.Config:
    """uvicorn as edge runs it; ``max_connections`` in place of the configured (descriptors)."""
    limits = ClientLimits.from_settings(settings.server, settings.admin.port, max_connections)
    return uvicorn.Config(
        app,
        factory=isinstance(app, str),
        workers=settings.server.workers,
        loop="uvloop",
        # httptools, bounded: head sizes, client deadlines, connections (edge.serving.protocol).
        # uvicorn's limit_concurrency is not used: it counts a connection only once its head is
        # whole, so connections that never finish one hold descriptors without limit.
        http=protocol(limits),
        # uvicorn's websockets-sansio (on the websockets library): its default, maintained,
        # and it can answer a refused handshake with a whole HTTP response.
        ws=WebSocketProtocol,
        ws_max_size=settings.websocket.max_message_size,
        ws_ping_interval=settings.websocket.ping_interval,
        ws_ping_timeout=settings.websocket.ping_interval,
        lifespan="on",
        # edge forwards the backend's own Date and Server headers and sets Date on its own
        # answers; client forwarding headers are judged by edge, never rewritten by uvicorn.
        server_header=False,
        date_header=False,
        proxy_headers=False,
        access_log=False,  # edge writes its own (edge.observe.logs)
        log_config=None,  # edge.observe.logs.configure: JSON lines, in every worker process
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=round(settings.server.graceful_timeout),
        backlog=2048,
    )


def serve(
    settings: Settings,
    store: ModeStore | None = None,
    side_listeners: Mapping[Listener, ASGIApp] | None = None,
    *,
    source: Path,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get the graceful timeout to finish.

    ``source`` is the config file ``settings`` came from, for the line that says what runs.
    """
    from edge.serving.app import EdgeApp

    logs.configure(settings.server)
    fds = descriptors.at_start(settings)
    connections = fds.connections
    public = bind(Listener(settings.server.host, settings.server.port))
    admin = bind(Listener(settings.admin.host, settings.admin.port))
    side = {bind(listener): app for listener, app in (side_listeners or {}).items()}
    settings = with_bound_ports(settings, public, admin)
    log.info("edge starting", extra=starting(settings, source, fds))
    sockets = [public, admin, *side]
    if settings.server.workers == 1:
        side_apps = {sock.getsockname()[1]: app for sock, app in side.items()}
        app = EdgeApp(settings, store=store, side_apps=side_apps)
        with _signals_end_in_exit_zero():
            uvicorn.Server(uvicorn_config(settings, app, connections)).run(sockets=sockets)
        return
    # Workers are fresh processes: they read the config from the environment, so pin the
    # ports that were really bound there.
    os.environ["EDGE_SERVER__PORT"] = str(settings.server.port)
    os.environ["EDGE_ADMIN__PORT"] = str(settings.admin.port)
    config = uvicorn_config(settings, "edge.serving.app:from_environment", connections)
    _Supervisor(config, sockets).run()


def starting(settings: Settings, source: Path, fds: descriptors.Descriptors) -> dict[str, object]:
    """What this edge runs with, for its first log line: nothing secret."""
    server, admin, store = settings.server, settings.admin, settings.store
    return {
        "config": str(source.resolve()),
        "listen": f"{server.host}:{server.port}",
        "admin": f"{admin.host}:{admin.port}",
        "workers": server.workers,
        "legacy": {"hosts": settings.legacy.hosts, "backend": settings.legacy.backend},
        "new": {"hosts": settings.new.hosts, "backend": settings.new.backend},
        "store": {"url": redacted_url(store.url), "prefix": store.prefix},
        "file_descriptors": fds.summary(),
    }


@contextmanager
def _signals_end_in_exit_zero() -> Iterator[None]:
    """After its graceful shutdown uvicorn raises the SIGTERM or SIGINT it caught again, so that
    the process dies of it; ignored here, so that a stop asked for ends in exit status 0."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Supervisor(Multiprocess):
    def terminate_all(self) -> None:
        # The workers stop accepting when told to stop, but the parent's copies of the
        # listening sockets would keep taking connections into the backlog that nobody
        # answers: close them first, so that new connections are refused.
        for sock in self.sockets:
            sock.close()
        super().terminate_all()
