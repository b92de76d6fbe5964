"""Loopback ports: a free one, a bound socket, waiting until something listens."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bound_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class ServerDied(RuntimeError):
    """A server exited before it listened: most often, its free port was taken meanwhile."""


def wait_for_port(
    port: int, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something listens on ``port``; with ``process``, fail as soon as it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process is not None and process.poll() is not None:
            raise ServerDied(f"the server for 127.0.0.1:{port} exited ({process.returncode})")
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")
