"""Three portals on loopback that each read HTTP/1.1 their own way, and record what they parsed.

- ``StrictPortal``: h11, keep-alive; refuses what RFC 9112 refuses. It answers an upload to a
  path with a segment ``early`` as soon as its head is in, then reads the body and drops it.
- ``CgiPortal``: wsgiref in threads, CGI-style: header names reach the application as
  ``HTTP_X_EDGE_MODE``, so "X_Edge_Mode" and "X-Edge-Mode" are one header, their values
  joined with "," (as gunicorn before 22 and Puma before 6.4.3 did too). One request per
  connection; it reads chunked bodies itself, as gunicorn does.
- ``GreedyPortal``: raw sockets, keep-alive; splits whatever arrives into as many requests as
  it can find, skipping lines that start none, and answers each at once.

Every one answers 200 with an empty body; ``seen`` is what it parsed, in order.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import unquote_to_bytes
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import h11

from tests.support.servers import ScriptedPortal

_READ = 65536


@dataclass(frozen=True)
class Parsed:
    """One request as a portal parsed it."""

    method: str
    raw_path: bytes  # as the server hands it on: percent-encoded (CGI: decoded once)
    path: str  # decoded as the server decodes it
    query: str
    headers: tuple[tuple[str, str], ...]  # names lower-case, as the application gets them
    body: bool  # a body came with it: a length above 0, or chunked

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def _parsed(method: bytes, target: bytes, headers: list[tuple[str, str]], body: bool) -> Parsed:
    raw_path, _, query = target.partition(b"?")
    return Parsed(
        method.decode("latin-1"),
        raw_path,
        unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        query.decode("latin-1"),
        tuple(headers),
        body,
    )


class _SocketPortal(ScriptedPortal):
    """ScriptedPortal's connections, each served by ``converse`` in a thread of its own."""

    def __init__(self) -> None:
        super().__init__(lambda head: None)
        self.seen: list[Parsed] = []

    def _converse(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            self.converse(conn)

    def converse(self, conn: socket.socket) -> None:
        raise NotImplementedError


class StrictPortal(_SocketPortal):
    """h11: what it cannot parse is recorded as a request of method "unparseable".

    A request with a body whose path has a segment ``early`` is answered as soon as its head
    is parsed, as a server that refuses an upload answers, and recorded then; its body is read
    after the answer and dropped, by its framing, and the connection kept for the next
    request. If the connection ends before that body does (a proxy that stopped sending it
    once answered), that ends it quietly: the request was parsed, and nothing else was sent.
    """

    def converse(self, conn: socket.socket) -> None:
        connection = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = answered = ended = False
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as exc:
                if not (answered and ended):  # else: a body cut short after the answer
                    self.seen.append(_parsed(b"unparseable", str(exc).encode(), [], False))
                return
            if event is h11.NEED_DATA:
                data = conn.recv(_READ)
                ended = not data
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                request, body, answered = event, False, False
                if _answers_early(event):
                    self._record(event, True)
                    if not self._answer(conn, connection):
                        return
                    answered = True
            elif isinstance(event, h11.Data):
                body = body or bool(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                if not answered:
                    self._record(request, body)
                    if not self._answer(conn, connection):
                        return
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return  # one of them asked to close
                connection.start_next_cycle()
            else:  # ConnectionClosed, or PAUSED on a protocol switch it will not make
                return

    def _record(self, request: h11.Request, body: bool) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers]
        chunked = any(k == "transfer-encoding" for k, _ in headers)
        self.seen.append(_parsed(request.method, request.target, headers, body or chunked))

    @staticmethod
    def _answer(conn: socket.socket, connection: h11.Connection) -> bool:
        """Answer 200; False if the answer ends the connection."""
        response = h11.Response(status_code=200, headers=[(b"content-length", b"0")])
        conn.sendall(connection.send(response) + connection.send(h11.EndOfMessage()))
        return connection.our_state is h11.DONE


def _answers_early(request: h11.Request) -> bool:
    """A request with a body (chunked, or a length above 0) whose path names ``early``."""
    framing = {k: v for k, v in request.headers if k in (b"content-length", b"transfer-encoding")}
    has_body = b"transfer-encoding" in framing or framing.get(b"content-length", b"0") != b"0"
    return has_body and b"early" in request.target.partition(b"?")[0].split(b"/")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


Environ = dict[str, Any]
StartResponse = Callable[[str, list[tuple[str, str]]], object]


class CgiPortal:
    """wsgiref's server: the application reads request headers from HTTP_* variables."""

    def __init__(self) -> None:
        self.seen: list[Parsed] = []
        self.server = make_server(
            "127.0.0.1", 0, self.app, _ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def app(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        headers = [
            (key[5:].lower().replace("_", "-"), value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        length = environ.get("CONTENT_LENGTH") or ""
        if length:
            headers.append(("content-length", length))
        stream = environ["wsgi.input"]
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            _read_chunked(stream)
            body = True
        else:
            body = bool(length.isdigit() and stream.read(int(length)))
        raw_path = environ["PATH_INFO"].encode("latin-1")  # PEP 3333: bytes as Latin-1
        self.seen.append(
            Parsed(
                environ["REQUEST_METHOD"],
                raw_path,
                raw_path.decode("utf-8", "replace"),
                environ.get("QUERY_STRING", ""),
                tuple(headers),
                body,
            )
        )
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    def __enter__(self) -> CgiPortal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def _read_chunked(stream: Any) -> None:
    while True:
        size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
        stream.read(size + 2)
        if size == 0:
            return


_REQUEST_LINE = re.compile(rb"([A-Za-z]+) (\S+) HTTP/1\.[01]\r?\n")
_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class GreedyPortal(_SocketPortal):
    def converse(self, conn: socket.socket) -> None:
        buffer = b""
        while data := conn.recv(_READ):
            found, buffer = parse_greedily(buffer + data)
            self.seen.extend(found)
            if found:
                conn.sendall(_ANSWER * len(found))


def parse_greedily(buffer: bytes) -> tuple[list[Parsed], bytes]:
    """Every whole request in ``buffer``, and what is left once they are taken: a line that
    starts no request is skipped; Transfer-Encoding with "chunked" anywhere wins over the first
    Content-Length; names are read in any case."""
    found: list[Parsed] = []
    while (start := buffer.find(b"\n")) >= 0:
        line = _REQUEST_LINE.match(buffer)
        if line is None:
            buffer = buffer[start + 1 :]
            continue
        request = _request_at(buffer, line)
        if request is None:
            break  # not all of it is here yet
        parsed, end = request
        found.append(parsed)
        buffer = buffer[end:]
    return found, buffer


def _request_at(buffer: bytes, line: re.Match[bytes]) -> tuple[Parsed, int] | None:
    position = line.end()
    headers: list[tuple[str, str]] = []
    while True:
        end = buffer.find(b"\n", position)
        if end < 0:
            return None
        field = buffer[position:end].rstrip(b"\r")
        position = end + 1
        if not field:
            break
        name, _, value = field.partition(b":")
        headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    encodings = [v.lower() for k, v in headers if k == "transfer-encoding"]
    lengths = [v for k, v in headers if k == "content-length"]
    if any("chunked" in encoding for encoding in encodings):
        position_or_none = _after_chunks(buffer, position)
        if position_or_none is None:
            return None
        body, position = True, position_or_none
    else:
        digits = re.match(r"\d*", lengths[0] if lengths else "")
        length = int(digits.group() or 0) if digits else 0  # "5, 5" is 5, "x" is 0
        if len(buffer) < position + length:
            return None
        body, position = length > 0, position + length
    return _parsed(line.group(1), line.group(2), headers, body), position


def _after_chunks(buffer: bytes, position: int) -> int | None:
    """Where a chunked body starting at ``position`` ends; None while it has not all come."""
    while True:
        end = buffer.find(b"\n", position)
        if end < 0:
            return None
        try:
            size = int(buffer[position:end].split(b";")[0].strip() or b"0", 16)
        except ValueError:
            return end + 1  # not a chunk: the body ends here, what follows is read anew
        position = end + 1
        if size == 0:
            return _after_trailers(buffer, position)
        if len(buffer) < position + size + 2:
            return None
        position += size + 2


def _after_trailers(buffer: bytes, position: int) -> int | None:
    while (end := buffer.find(b"\n", position)) >= 0:
        line, position = buffer[position:end].rstrip(b"\r"), end + 1
        if not line:
            return position
    return None
