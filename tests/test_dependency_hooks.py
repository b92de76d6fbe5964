"""The uvicorn internals edge subclasses and calls exist with the shapes edge expects.

uvicorn's protocol classes, its STATUS_LINE table and its Multiprocess supervisor are not its
public API: a new minor may rename or reshape them, and an override that no longer overrides
anything fails silently (edge's bounded heads would simply stop being bounded). Here an
upgrade fails loudly, by name, before any behaviour test has to notice.

Every method an edge subclass defines must override one of its uvicorn parent's with the same
parameters, unless it is listed in OWN as edge's own.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from functools import partial
from typing import Any

import httptools
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from edge import config
from edge.forwarding.websocket import WebSocketProtocol
from edge.serving.protocol import BoundedHttpToolsProtocol
from edge.serving.server import _Supervisor, uvicorn_config

# edge's subclass → the uvicorn class it builds on.
PARENTS: dict[type[Any], type[Any]] = {
    BoundedHttpToolsProtocol: HttpToolsProtocol,
    WebSocketProtocol: WebSocketsSansIOProtocol,
    _Supervisor: Multiprocess,
}
# Methods of edge's subclasses that override nothing upstream, on purpose.
OWN: dict[type[Any], set[str]] = {
    BoundedHttpToolsProtocol: {
        "refuse",
        "turn_away",
        "head_overdue",
        "body_overdue",
        "send_overdue",
        "client_turn",
        "parse",
        "feed",
        # llhttp's, which uvicorn leaves out and httptools calls when defined (tested below).
        "on_chunk_header",
        "on_chunk_complete",
    }
}
# What edge calls on its parents beyond what it overrides.
CALLED: dict[type[Any], set[str]] = {HttpToolsProtocol: {"send_400_response"}}


def _methods(cls: type[Any]) -> list[str]:
    return [
        name
        for name, value in vars(cls).items()
        if inspect.isfunction(value) and (name == "__init__" or not name.startswith("__"))
    ]


def _shape(function: Any) -> list[tuple[str, Any]]:
    """Parameter names and kinds, and whether it is a coroutine function: not annotations."""
    parameters = inspect.signature(function).parameters.values()
    return [("async", inspect.iscoroutinefunction(function))] + [
        (p.name, p.kind) for p in parameters
    ]


@pytest.mark.parametrize("cls", list(PARENTS), ids=lambda cls: cls.__name__)
def test_every_override_overrides_a_method_of_the_same_shape(cls: type[Any]) -> None:
    parent = PARENTS[cls]
    overrides = [m for m in _methods(cls) if m != "__init__" and m not in OWN.get(cls, set())]
    assert overrides, f"{cls.__name__} overrides nothing: drop it from PARENTS"
    for name in overrides:
        upstream = getattr(parent, name, None)
        assert upstream is not None, f"{parent.__qualname__}.{name} is gone: edge overrides it"
        assert _shape(getattr(cls, name)) == _shape(upstream), f"{parent.__qualname__}.{name}"


@pytest.mark.parametrize("cls", list(OWN), ids=lambda cls: cls.__name__)
def test_edges_own_methods_do_not_shadow_a_parents(cls: type[Any]) -> None:
    for name in OWN[cls]:
        assert name in vars(cls), f"{cls.__name__}.{name} is listed in OWN but not defined"
        assert not hasattr(PARENTS[cls], name), f"{PARENTS[cls].__qualname__} now has {name}"


def test_what_edge_calls_upstream_exists() -> None:
    for parent, names in CALLED.items():
        for name in names:
            assert callable(getattr(parent, name, None)), f"{parent.__qualname__}.{name}"
    # edge writes its own 414 and 431 answers with uvicorn's status lines.
    for status in (400, 414, 431):
        assert STATUS_LINE[status].startswith(b"HTTP/1.1 %d " % status)
        assert STATUS_LINE[status].endswith(b"\r\n")


SETTINGS = config.from_mapping(
    {
        "server": {"workers": 3, "graceful_timeout": 7},
        "store": {"url": "redis://127.0.0.1:6399/0"},
        "legacy": {"hosts": ["l.test"], "backend": "http://l:1", "public_url": "http://l.test"},
        "new": {"hosts": ["n.test"], "backend": "http://n:1", "public_url": "http://n.test"},
        "websocket": {"max_message_size": 4096, "ping_interval": 9},
    }
)


def test_uvicorn_config_takes_every_setting_edge_passes() -> None:
    made = uvicorn_config(SETTINGS, "edge.serving.app:from_environment")
    accepted = inspect.signature(uvicorn.Config).parameters
    expected = {
        "factory": True,
        "workers": 3,
        "loop": "uvloop",
        "ws": WebSocketProtocol,
        "ws_max_size": 4096,
        "ws_ping_interval": 9,
        "ws_ping_timeout": 9,
        "lifespan": "on",
        "server_header": False,
        "date_header": False,
        "proxy_headers": False,
        "access_log": False,
        "log_config": None,
        "log_level": "info",
        "timeout_graceful_shutdown": 7,
        "backlog": 2048,
    }
    for name, value in expected.items():
        assert name in accepted, f"uvicorn.Config no longer takes {name}"
        assert getattr(made, name) == value, name
    assert isinstance(made.http, partial) and made.http.func is BoundedHttpToolsProtocol


def test_uvicorn_builds_edges_protocol_as_edge_expects_and_it_reads_a_head() -> None:
    """uvicorn makes the HTTP protocol as its server does; on a real socket, the parser's
    callbacks fill the attributes edge reads (url, headers, transport)."""
    made = uvicorn_config(SETTINGS, _no_app)
    made.load()
    assert made.ws_protocol_class is WebSocketProtocol
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    try:
        protocol = made.http_protocol_class(  # type: ignore[call-arg]
            config=made, server_state=ServerState(), app_state={}, _loop=loop
        )
        assert isinstance(protocol, BoundedHttpToolsProtocol)

        async def read_head() -> None:
            await loop.connect_accepted_socket(lambda: protocol, ours)
            theirs.sendall(b"GET /acme/x?y=1 HTTP/1.1\r\nHost: a.test\r\nX-Two: 2  \r\n")
            for _ in range(100):
                if len(getattr(protocol, "headers", None) or []) == 1:
                    break
                await asyncio.sleep(0.01)

        loop.run_until_complete(read_head())
        assert protocol.url == b"/acme/x?y=1"
        assert protocol.headers == [(b"host", b"a.test")]  # a header is whole at the next one
        assert protocol.transport is not None
        protocol.transport.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
        theirs.close()


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no request reaches the app here")


def test_httptools_calls_the_chunk_callbacks_edge_defines() -> None:
    """edge's protocol sees a chunk's header and end (to tell a trailer from the head)."""
    calls: list[str] = []

    class Recorder:
        def on_chunk_header(self) -> None:
            calls.append("header")

        def on_chunk_complete(self) -> None:
            calls.append("complete")

    parser = httptools.HttpRequestParser(Recorder())
    parser.feed_data(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n")
    assert calls == ["header", "complete", "header", "complete"]
