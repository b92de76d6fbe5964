"""Servers on loopback for edge to forward to: uvicorn in a thread, raw asyncio and raw TCP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import uvicorn

from tests.support.ports import bound_socket


class ServerThread:
    """A real uvicorn server on loopback, in a thread with its own event loop.

    Give it an app (and uvicorn options), or a ready uvicorn.Config and the sockets to serve.
    """

    def __init__(
        self,
        app: Any = None,
        *,
        config: uvicorn.Config | None = None,
        sockets: list[socket.socket] | None = None,
        **options: Any,
    ) -> None:
        self.sockets = sockets or [bound_socket()]
        self.port = int(self.sockets[0].getsockname()[1])
        if config is None:
            config = uvicorn.Config(app, **{"log_level": "warning", "lifespan": "auto", **options})
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": self.sockets}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        for sock in self.sockets:
            sock.close()


class AsyncPortal:
    """A raw asyncio server on a free loopback port, its event loop in a thread of its own:
    ``serve`` (a subclass's) handles each connection. ``with`` starts it; leaving stops it and
    every connection it still serves."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.thread.start()
        start = asyncio.start_server(self.serve, sock=self.sock)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _close(self) -> None:
        self.server.close()
        connections = asyncio.all_tasks() - {asyncio.current_task()}
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


Answer = Callable[[bytes], bytes | None]  # request head → the bytes to send back; None: hang up


class ScriptedPortal:
    """A bare TCP portal on loopback: reads each request (head, and a body of announced length)
    and sends ``answer(head)`` back as raw bytes, or hangs up on None. The connection stays
    open for the next request unless ``hang_up``, or the answer says ``Connection: close`` or
    has no length."""

    def __init__(
        self, answer: Answer, delay: float = 0.0, hang_up: bool = False, patience: float = 10.0
    ) -> None:
        self.answer = answer
        self.delay = delay
        self.hang_up = hang_up
        self.patience = patience  # seconds a connection may stay quiet before it hangs up
        self.connections = 0
        self.open = 0
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self.open += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._converse(conn)
        finally:
            self.open -= 1

    def _converse(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.patience)
            buffer = b""
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        if not (data := conn.recv(65536)):
                            return
                        buffer += data
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    self.requests.append(head)
                    length = _content_length(head)
                    while len(buffer) < length:
                        if not (data := conn.recv(65536)):
                            return
                        buffer += data
                    buffer = buffer[length:]
                    time.sleep(self.delay)
                    reply = self.answer(head)
                    if reply is None:
                        return
                    conn.sendall(reply)
                    lowered = reply.lower()
                    if (
                        self.hang_up
                        or b"connection: close" in lowered
                        or b"content-length" not in lowered
                    ):
                        return
            except OSError:
                return

    def __enter__(self) -> ScriptedPortal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name == b"content-length":
            return int(value)
    return 0
