"""https:// portals: edge checks the portal's certificate against the front's CA, shows its own
client certificate, checks the host name unless told not to, and relays WebSockets the same way.

The portals are real TLS servers on loopback (uvicorn asking for client certificates, and a
raw ssl socket for the ways a TLS stream can end), with certificates made by openssl.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from edge.core.asgi import Receive, Scope, Send
from tests.support.certificates import make_certificates
from tests.support.ports import bound_socket
from tests.support.servers import ServerThread
from tests.support.settings import LEGACY_HOST, settings_for
from tests.support.stack import run_edge

WAIT = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("portal-tls"))


class Portal:
    """Answers HTTP with what it was asked and who asked; echoes WebSocket messages."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode()
            self.hosts.append(host)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": f"tls for {host}".encode()})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": "echo: " + message["text"]})


@pytest.fixture(scope="module")
def portal(certs: Path) -> Iterator[tuple[str, Portal]]:
    """A uvicorn portal on https://127.0.0.1:PORT that asks every client for a certificate."""
    app = Portal()
    with ServerThread(
        app,
        ssl_certfile=str(certs / "server.crt"),
        ssl_keyfile=str(certs / "server.key"),
        ssl_ca_certs=str(certs / "ca.crt"),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    ) as server:
        yield f"https://127.0.0.1:{server.port}", app


@contextlib.contextmanager
def edge_for(url: str, **tls: Any) -> Iterator[str]:
    """edge with its legacy front on ``url`` and ``tls`` keys in [legacy]; its public URL."""
    raw = settings_for(url, url, "memory://", "tls:")
    raw["legacy"].update({key: str(value) for key, value in tls.items()})
    with run_edge(raw) as (_, public_url, _):
        yield public_url


def get(public_url: str, path: str = "/acme/page") -> httpx.Response:
    return httpx.get(public_url + path, headers={"Host": LEGACY_HOST}, timeout=WAIT)


def client_certificate(certs: Path) -> dict[str, Path]:
    return {
        "ssl_ca_certs": certs / "ca.crt",
        "ssl_certfile": certs / "client.crt",
        "ssl_keyfile": certs / "client.key",
    }


def test_requests_reach_an_https_portal_that_knows_edges_certificate(
    certs: Path, portal: tuple[str, Portal]
) -> None:
    url, app = portal
    seen = len(app.hosts)
    with edge_for(url, **client_certificate(certs)) as public_url:
        responses = [get(public_url) for _ in range(3)]
    assert [(r.status_code, r.text) for r in responses] == [(200, f"tls for {LEGACY_HOST}")] * 3
    assert app.hosts[seen:] == [LEGACY_HOST] * 3


def test_a_portal_certificate_from_an_unknown_ca_is_a_502(
    certs: Path, portal: tuple[str, Portal]
) -> None:
    """Without ssl_ca_certs edge trusts the system's CAs only, which never signed the test's."""
    url, _ = portal
    tls = client_certificate(certs)
    del tls["ssl_ca_certs"]
    with edge_for(url, **tls) as public_url:
        assert get(public_url).status_code == 502


def test_without_edges_client_certificate_the_portal_refuses_it(
    certs: Path, portal: tuple[str, Portal]
) -> None:
    url, app = portal
    seen = len(app.hosts)
    with edge_for(url, ssl_ca_certs=certs / "ca.crt") as public_url:
        assert get(public_url).status_code == 502
    assert len(app.hosts) == seen


def test_the_host_name_is_checked_unless_told_otherwise(
    certs: Path, portal: tuple[str, Portal]
) -> None:
    """The certificate names 127.0.0.1 only: "localhost" does not match it."""
    url = portal[0].replace("127.0.0.1", "localhost")
    tls = client_certificate(certs)
    with edge_for(url, **tls) as public_url:
        assert get(public_url).status_code == 502
    with edge_for(url, **tls, ssl_check_hostname=False) as public_url:
        assert get(public_url).status_code == 200


def test_a_websocket_to_an_https_portal_goes_over_tls(
    certs: Path, portal: tuple[str, Portal]
) -> None:
    url, _ = portal
    with edge_for(url, **client_certificate(certs)) as public_url:
        port = int(public_url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), WAIT)
        with connect(f"ws://{LEGACY_HOST}/acme/live", sock=sock, open_timeout=WAIT) as ws:
            ws.send("over tls")
            assert ws.recv(timeout=WAIT) == "echo: over tls"


class UntilClosePortal:
    """A raw TLS portal whose answers run until the connection closes: with TLS's own end
    (close_notify) when ``clean``, else a bare TCP close that cuts the TLS stream."""

    def __init__(self, certs: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certs / "server.crt", certs / "server.key")
        self.sock = bound_socket()
        self.sock.listen()
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = self.sock.accept()
                with contextlib.suppress(OSError):
                    conn = self.context.wrap_socket(raw, server_side=True)
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += conn.recv(65536)
                    clean = b"clean" in head.split(b"\r\n", 1)[0]
                    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"t" * 3000)
                    if clean:
                        conn = conn.unwrap()  # close_notify, then the TCP close
                    conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("path", "whole"), [("/acme/clean", True), ("/acme/cut", False)])
def test_a_tls_body_to_the_close_is_whole_only_with_tls_own_end(
    certs: Path, path: str, whole: bool
) -> None:
    raw_portal = UntilClosePortal(certs)
    try:
        with edge_for(raw_portal.url, ssl_ca_certs=certs / "ca.crt") as public_url:
            if whole:
                response = get(public_url, path)
                assert (response.status_code, response.content) == (200, b"t" * 3000)
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    get(public_url, path)
    finally:
        raw_portal.close()
