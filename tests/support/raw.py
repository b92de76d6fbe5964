"""HTTP/1.1 as raw bytes on a socket, for requests no well-behaved client would send."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]  # names lower-case
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


@dataclass
class Reply:
    """Everything the server wrote back before it closed the connection (or went quiet)."""

    data: bytes
    closed: bool  # the server closed the connection (or reset it)

    @property
    def responses(self) -> list[Response]:
        """The responses in the reply, in order, each framed as HTTP/1.1 frames it."""
        responses, rest = [], self.data
        while rest.startswith(b"HTTP/1.1 ") and b"\r\n\r\n" in rest:
            head, _, rest = rest.partition(b"\r\n\r\n")
            status_line, *lines = head.split(b"\r\n")
            headers = [
                (name.strip().lower(), value.strip())
                for name, _, value in (line.partition(b":") for line in lines)
            ]
            response = Response(int(status_line[9:12]), headers, b"")
            if response.header(b"transfer-encoding") == b"chunked":
                while True:
                    size_line, _, rest = rest.partition(b"\r\n")
                    size = int(size_line.split(b";")[0], 16)
                    response.body += rest[:size]
                    rest = rest[size + 2 :]
                    if size == 0:
                        break
            elif response.status >= 200:
                length = int(response.header(b"content-length") or len(rest))
                response.body, rest = rest[:length], rest[length:]
            responses.append(response)
        return responses

    @property
    def statuses(self) -> list[int]:
        """The status of every response in the reply, in order (100 Continue included)."""
        return [response.status for response in self.responses]

    @property
    def status(self) -> int:
        return self.statuses[0]

    def header(self, name: bytes) -> bytes | None:
        """A header of the first response."""
        return self.responses[0].header(name)


def exchange(port: int, data: bytes, quiet_after: float = 1.0) -> Reply:
    """Send data to 127.0.0.1:port and read until the server closes or says nothing more for
    quiet_after seconds (a keep-alive connection waiting for the next request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Refused before it read everything: what it answered is still readable.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_reply(sock, quiet_after)


def read_reply(sock: socket.socket, quiet_after: float) -> Reply:
    """Read until the server closes the connection (or resets it), or says nothing more for
    quiet_after seconds (closed=False: it was still open)."""
    sock.settimeout(quiet_after)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return Reply(received, closed=False)
        except ConnectionResetError:
            return Reply(received, closed=True)
        if not chunk:
            return Reply(received, closed=True)
        received += chunk


def request(
    method: bytes,
    target: bytes,
    host: bytes,
    headers: bytes = b"",
    body: bytes = b"",
    close: bool = True,
) -> bytes:
    """One request's bytes; headers are raw lines, each ending in CRLF."""
    framing = b"content-length: %d\r\n" % len(body) if body or method == b"POST" else b""
    connection = b"connection: close\r\n" if close else b""
    return (
        method
        + b" "
        + target
        + b" HTTP/1.1\r\nhost: "
        + host
        + b"\r\n"
        + headers
        + framing
        + connection
        + b"\r\n"
        + body
    )
