"""edge without its routing, for the bench's ratios: ``python -m bench.forward_only --config PATH``.

The default variant is the same build as ``edge serve`` (the same EdgeApp, uvicorn settings,
access log and metrics) with one change: the router forwards every request to `[new].backend`
without resolving the tenant, looking its mode up or deciding. edge's throughput over this
variant's is the price of those steps. With ``--bare`` only ``Forwarder.forward`` runs under the
same uvicorn: the forwarding leg alone, without the access log and metrics either.
"""

from __future__ import annotations

import argparse
import gc

import uvicorn

from edge import config
from edge.config import Settings
from edge.core.asgi import Receive, Scope, Send
from edge.core.tenants import Front
from edge.forwarding.headers import Backend, ClientView
from edge.forwarding.proxy import Forwarder
from edge.observe import logs
from edge.observe.served import Served
from edge.routing.router import Router
from edge.serving.app import EdgeApp
from edge.serving.server import Listener, bind, uvicorn_config

TENANT = "bench-gym"
# What the router adds for the bench's tenant, so that every variant sends the same request.
_EDGE_HEADERS = [(b"x-edge-tenant", TENANT.encode()), (b"x-edge-mode", b"active")]


def skip_routing(router: Router) -> None:
    """Make the router forward everything to the new backend, with its observability kept."""
    backend = router.backends[Front.NEW].for_tenant(TENANT)
    forward = router.forwarder.forward

    async def route(
        scope: Scope, receive: Receive, send: Send, view: ClientView, served: Served
    ) -> None:
        served.front, served.tenant, served.mode = Front.NEW, TENANT, "active"
        served.forwarded(await forward(scope, receive, send, backend, _EDGE_HEADERS, view))

    router._route = route  # type: ignore[method-assign]


class BareForwarder:
    def __init__(self, settings: Settings) -> None:
        self.forwarder = Forwarder(settings.upstream, settings.server.trusted_proxies)
        self.backend = Backend.from_settings(settings.new).for_tenant(TENANT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            view = self.forwarder.client_view(scope)
            await self.forwarder.forward(scope, receive, send, self.backend, _EDGE_HEADERS, view)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.forwarder.start()
                gc.collect()  # as EdgeApp does
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.forwarder.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--config", required=True)
    arguments.add_argument("--bare", action="store_true", help="Forwarder.forward alone")
    options = arguments.parse_args()
    settings = config.load(options.config)
    logs.configure(settings.server)
    sockets = [bind(Listener(settings.server.host, settings.server.port))]
    if options.bare:
        app: EdgeApp | BareForwarder = BareForwarder(settings)
    else:
        sockets.append(bind(Listener(settings.admin.host, settings.admin.port)))
        app = EdgeApp(settings)
        skip_routing(app.router)
    uvicorn.Server(uvicorn_config(settings, app)).run(sockets=sockets)


if __name__ == "__main__":
    main()
