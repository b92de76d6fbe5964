"""Composition: one process's store, cache, forwarder, router and admin app, behind one ASGI app.

A single uvicorn server listens on every socket (public, admin, and the demo portals); the
app sends each connection to the app that owns the local port it arrived on, so the admin API
can never be reached through the public listener.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping

from edge import config
from edge.activation.shadow import Shadow
from edge.activation.traffic import Traffic
from edge.activation.watch import WatchMonitor
from edge.admin.api import AdminApi
from edge.admin.dashboard import Dashboard
from edge.admin.parts import AdminParts
from edge.config import Settings
from edge.core.asgi import ASGIApp, Receive, Scope, Send
from edge.forwarding.proxy import Forwarder
from edge.forwarding.websocket import WebSocketRelay
from edge.modes import ModeCache, ModeStore
from edge.moves.schedule import Scheduler
from edge.moves.service import Clock, utc_now
from edge.observe import logs
from edge.observe.metrics import Metrics
from edge.routing.router import Router
from edge.serving import clients
from edge.serving.compose import Parts

log = logging.getLogger("edge")


class EdgeApp:
    def __init__(
        self,
        settings: Settings,
        store: ModeStore | None = None,
        side_apps: Mapping[int, ASGIApp] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.settings = settings
        parts = Parts(settings, store, clock)
        self.store = parts.store
        self.cache = ModeCache(
            self.store,
            resync_interval=settings.store.resync_interval,
            max_size=settings.store.cache_size,
            negative_size=settings.store.negative_cache_size,
            negative_ttl=settings.store.negative_ttl,
            resync_keys=settings.store.resync_keys,
        )
        self.forwarder = Forwarder(settings.upstream, settings.server.trusted_proxies)
        self.scheduler = Scheduler(self.store, parts.moves)
        self.access_log = logs.AccessLog() if logs.access_log_enabled(settings.server) else None
        self.metrics = Metrics(self.cache, self.access_log)
        self.websockets = WebSocketRelay(settings.websocket, settings.upstream)
        self.readiness = parts.readiness
        shadow = (
            Shadow(settings, self.forwarder, parts.policy)
            if settings.shadow.sample_rate > 0
            else None
        )
        self.traffic = Traffic(self.store, settings, keyed=self.cache.keyed, shadow=shadow)
        if shadow is not None:
            self.metrics.registry.register(shadow)
        self.watch = WatchMonitor(self.store, self.traffic, settings)
        self.metrics.registry.register(self.traffic)
        self.metrics.registry.register(clients.STATS)
        self.metrics.registry.register(self.watch)
        self.router = Router(
            settings,
            self.cache,
            self.forwarder,
            policy=parts.policy,
            preview=parts.preview,
            metrics=self.metrics,
            access_log=self.access_log,
            traffic=self.traffic,
            websockets=self.websockets,
        )
        admin = AdminParts.of(self.store, parts.moves, self.readiness, self.watch)
        self.admin = AdminApi(admin, self.cache, settings.admin.token, self.metrics).app()
        self.admin = Dashboard(settings, admin, policy=parts.policy, preview=parts.preview).around(
            self.admin
        )
        self.by_port: dict[int, ASGIApp] = {**(side_apps or {})}
        self.by_port[settings.admin.port] = self.admin
        self.by_port[settings.server.port] = self.router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        server = scope.get("server")
        app = self.by_port.get(server[1]) if server else None
        await (app or self.router)(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.forwarder.start()
                    await self.websockets.start()
                    await self.cache.start()
                    await self.traffic.start()
                    await self.watch.start()
                    await self.scheduler.start()
                    if self.access_log is not None:
                        self.access_log.start()
                except Exception as exc:
                    log.exception("edge could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # What survives now (modules, config, apps) lives as long as the process: frozen,
                # the cyclic GC's full collections stop walking it. Each took ~33 ms of CPU
                # with the loop stalled, ~4% of the CPU per request; now ~3 ms.
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.scheduler.stop()
                await self.cache.stop()
                await self.watch.stop()
                await self.traffic.stop()  # writes the last counts
                # uvicorn sends this once requests in flight are done or the graceful
                # timeout has passed, so no request loses its upstream connection here.
                await self.forwarder.close()
                await self.websockets.close()
                await self.store.close()
                if self.access_log is not None:
                    self.access_log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def from_environment() -> EdgeApp:
    """The app factory each worker process calls: config from EDGE_CONFIG and EDGE_* variables."""
    settings = config.load()
    logs.configure(settings.server)
    return EdgeApp(settings)
