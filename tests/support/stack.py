"""The whole router on loopback: real uvicorn, the real EdgeApp, recording backends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from edge import config
from edge.core.asgi import Receive, Scope, Send
from edge.modes import ModeStore
from edge.moves.service import Clock, utc_now
from edge.serving.app import EdgeApp
from edge.serving.server import uvicorn_config
from tests.support.ports import bound_socket
from tests.support.servers import ServerThread
from tests.support.settings import settings_for


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return values[0] if values else None


@dataclass
class RecordingBackend:
    """A backend that answers 200 and remembers every request that reached it.

    ``statuses`` answers some paths otherwise: a page the portal lacks (404), a broken one (500).
    """

    name: str
    seen: list[Seen] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen = Seen(
            scope["method"],
            scope["raw_path"].decode("latin-1"),
            scope["query_string"].decode("latin-1"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            body,
        )
        self.seen.append(seen)
        answer = json.dumps({"backend": self.name, "path": seen.path}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": self.statuses.get(seen.path, 200),
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})


@dataclass
class Stack:
    edge: EdgeApp
    public_url: str
    admin_url: str
    legacy: RecordingBackend
    new: RecordingBackend

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.public_url, timeout=10, **kwargs)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, timeout=10)

    def reached_backend(self) -> int:
        return len(self.legacy.seen) + len(self.new.seen)


@contextmanager
def run_edge(
    raw: dict[str, Any], store: ModeStore | None = None, clock: Clock = utc_now
) -> Iterator[tuple[EdgeApp, str, str]]:
    """EdgeApp served by uvicorn exactly as `edge serve` configures it, on free ports."""
    public, admin = bound_socket(), bound_socket()
    raw = {
        **raw,
        "server": {**raw["server"], "port": public.getsockname()[1]},
        "admin": {**raw["admin"], "port": admin.getsockname()[1]},
    }
    settings = config.from_mapping(raw)
    app = EdgeApp(settings, store=store, clock=clock)
    with ServerThread(config=uvicorn_config(settings, app), sockets=[public, admin]):
        yield (
            app,
            f"http://127.0.0.1:{settings.server.port}",
            f"http://127.0.0.1:{settings.admin.port}",
        )


@contextmanager
def stack(
    store_url: str,
    prefix: str,
    store: ModeStore | None = None,
    store_settings: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> Iterator[Stack]:
    """``store_settings``: [store] keys beside the url and prefix (resync_interval: 0.2)."""
    legacy, new = RecordingBackend("legacy"), RecordingBackend("new")
    with ExitStack() as running:
        legacy_server = running.enter_context(ServerThread(legacy, log_level="warning"))
        new_server = running.enter_context(ServerThread(new, log_level="warning"))
        raw = settings_for(legacy_server.url, new_server.url, store_url, prefix, **sections)
        raw["store"].update(store_settings or {})
        app, public_url, admin_url = running.enter_context(run_edge(raw, store))
        yield Stack(app, public_url, admin_url, legacy, new)
