"""The forwarding leg alone: a minimal raw ASGI app around Forwarder.forward, served by uvicorn."""

from __future__ import annotations

from typing import Any

from edge.config import UpstreamSettings
from edge.forwarding import headers as edge_headers
from edge.forwarding.headers import ClientView
from edge.forwarding.proxy import Forwarder, UpstreamAborted
from edge.observe.served import Outcome
from tests.support.servers import ServerThread
from tests.support.waiting import WAIT, eventually

# What the router would have added: the tenant and its mode.
ROUTER_HEADERS = [(b"x-edge-tenant", b"acme-gym"), (b"x-edge-mode", b"setup")]


class ProxyApp:
    def __init__(self, backend: str, trusted: tuple[str, ...] = (), **upstream: Any) -> None:
        self.backend = edge_headers.Backend(backend)
        self.forwarder = Forwarder(UpstreamSettings(**upstream), trusted)
        self.outcomes: dict[str, Outcome] = {}  # by request target
        self.views: list[ClientView] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.forwarder.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.forwarder.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        view = self.forwarder.client_view(scope)
        self.views.append(view)
        target = (scope["raw_path"] + b"?" + scope["query_string"]).decode()
        try:
            outcome = await self.forwarder.forward(
                scope, receive, send, self.backend, ROUTER_HEADERS, view
            )
        except UpstreamAborted as exc:
            self.outcomes[target] = exc.outcome
            raise
        self.outcomes[target] = outcome

    def outcome(self, target: str) -> Outcome:
        """The outcome of the request for target ("/path?query"), once it is recorded."""
        eventually(lambda: target in self.outcomes, WAIT)
        return self.outcomes[target]


def serve_proxy(app: ProxyApp) -> ServerThread:
    # As the real app must run it: no Date/Server of uvicorn's own (the backend's pass through),
    # and no uvicorn proxy_headers, which would rewrite scope["client"] from X-Forwarded-For
    # (it trusts 127.0.0.1 by default) before Forwarder's own trust check.
    return ServerThread(
        app, server_header=False, date_header=False, proxy_headers=False, lifespan="on"
    )
