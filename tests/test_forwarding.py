"""The forwarding leg on real sockets: client → uvicorn(proxy app) → edge's upstream client →
uvicorn(backend)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from edge.forwarding import headers as edge_headers
from edge.forwarding.headers import (
    ClientView,
    client_view,
    downstream_headers,
    trust_checker,
    upstream_headers,
)
from tests.support.ports import free_port
from tests.support.proxy import ProxyApp, serve_proxy
from tests.support.servers import ScriptedPortal, ServerThread
from tests.support.waiting import WAIT, Signals, wait_event

GZIPPED = gzip.compress(b"the same words again and again " * 500, mtime=0)


# --- the backend: echoes what it got, streams, fails on purpose --------------------------------


class Backend:
    def __init__(self) -> None:
        self.signals = Signals()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        route = getattr(self, "route_" + scope["path"].strip("/").split("/")[0], None)
        await (route or self.echo)(scope, receive, send, query)

    async def echo(self, scope: dict[str, Any], receive: Any, send: Any, query: Any) -> None:
        digest, length = hashlib.sha256(), 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            if chunk and not length and "id" in query:
                self.signals[query["id"] + ":first-byte"].set()
            digest.update(chunk)
            length += len(chunk)
            if not message.get("more_body"):
                break
        body = json.dumps(
            {
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query_string": scope["query_string"].decode("latin-1"),
                "headers": [[k.decode(), v.decode("latin-1")] for k, v in scope["headers"]],
                "length": length,
                "sha256": digest.hexdigest(),
            }
        ).encode()
        await respond(send, 200, body, [(b"content-type", b"application/json")])

    async def route_cookies(self, scope: Any, receive: Any, send: Any, query: Any) -> None:
        cookies = [
            (b"set-cookie", b"session=abc123; Path=/; HttpOnly"),
            (b"set-cookie", b"theme=dark; Path=/; Max-Age=3600"),
            (b"set-cookie", b"csrf=x%2Fy; Path=/; Secure; SameSite=Lax"),
        ]
        await respond(send, 200, b"cookies set", cookies)

    async def route_gzip(self, scope: Any, receive: Any, send: Any, query: Any) -> None:
        headers = [(b"content-encoding", b"gzip"), (b"content-type", b"text/plain")]
        await respond(send, 200, GZIPPED, headers)

    async def route_hop(self, scope: Any, receive: Any, send: Any, query: Any) -> None:
        headers = [
            (b"connection", b"x-backend-secret"),
            (b"x-backend-secret", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-authenticate", b"Basic"),
            (b"trailer", b"x-checksum"),
            (b"upgrade", b"foo"),
            (b"x-request-id", b"backend-made-this"),
            (b"x-kept", b"yes"),
        ]
        await respond(send, 200, b"hop", headers)

    async def route_stream(self, scope: Any, receive: Any, send: Any, query: Any) -> None:
        """First chunk, then the last one only once the test has seen the first."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first;", "more_body": True})
        released = await wait_event(self.signals[query["id"] + ":seen-first"], WAIT)
        last = b"last:released" if released else b"last:timed-out"
        await send({"type": "http.response.body", "body": last})

    async def route_endless(self, scope: Any, receive: Any, send: Any, query: Any) -> None:
        gone = self.signals[query["id"] + ":disconnected"]
        watcher = asyncio.create_task(watch_disconnect(receive, gone))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        deadline = time.monotonic() + 30
        while not gone.is_set() and time.monotonic() < deadline:
            await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
            await asyncio.sleep(0.02)
        watcher.cancel()
        await send({"type": "http.response.body", "body": b""})

    async def route_slow(self, scope: Any, receive: Any, send: Any, query: Any) -> None:
        """Answers after ``s`` seconds, or never if the caller hangs up first."""
        gone = self.signals[query.get("id", "slow") + ":disconnected"]
        self.signals[query.get("id", "slow") + ":started"].set()
        watcher = asyncio.create_task(watch_disconnect(receive, gone))
        await wait_event(gone, float(query["s"]))
        watcher.cancel()
        await respond(send, 200, b"slow answer", [])

    async def route_broken(self, scope: Any, receive: Any, send: Any, query: Any) -> None:
        """Starts a 1000-byte answer and dies after 100 bytes: uvicorn drops the connection."""
        headers = [(b"content-length", b"1000")] if query.get("framing") == "length" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"y" * 100, "more_body": True})
        await asyncio.sleep(0.05)
        raise RuntimeError("backend dies mid-body (on purpose)")

    async def route_stall(self, scope: Any, receive: Any, send: Any, query: Any) -> None:
        gone = self.signals[query["id"] + ":disconnected"]
        watcher = asyncio.create_task(watch_disconnect(receive, gone))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"1000")],
            }
        )
        await send({"type": "http.response.body", "body": b"z" * 100, "more_body": True})
        await wait_event(gone, 30)
        watcher.cancel()


async def respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def watch_disconnect(receive: Any, gone: threading.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


# --- the proxy under test: a minimal raw ASGI app around Forwarder.forward ---------------------


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[ServerThread, Backend]]:
    app = Backend()
    with ServerThread(app) as server:
        yield server, app


@pytest.fixture(scope="module")
def proxy(backend: tuple[ServerThread, Backend]) -> Iterator[tuple[ServerThread, ProxyApp]]:
    app = ProxyApp(backend[0].url)
    with serve_proxy(app) as server:
        yield server, app


@pytest.fixture(scope="module")
def trusting_proxy(backend: tuple[ServerThread, Backend]) -> Iterator[ServerThread]:
    with serve_proxy(ProxyApp(backend[0].url, trusted=("127.0.0.1/32",))) as server:
        yield server


@pytest.fixture
def impatient(backend: tuple[ServerThread, Backend]) -> Iterator[tuple[ServerThread, ProxyApp]]:
    """Short timeouts and a pool of one connection, so that a leaked connection shows."""
    app = ProxyApp(backend[0].url, connect_timeout=1.0, read_timeout=0.3, pool_size=1)
    with serve_proxy(app) as server:
        yield server, app


@pytest.fixture
def signals(backend: tuple[ServerThread, Backend]) -> Signals:
    return backend[1].signals


def raw_exchange(
    port: int, request: bytes, timeout: float = WAIT
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Send bytes exactly as given (ending with Connection: close); parse what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(request)
        received = b""
        while data := sock.recv(65536):
            received += data
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = [
        (n.strip().lower(), v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:])
    ]
    if (b"transfer-encoding", b"chunked") in headers:
        body = dechunk(body)
    return int(lines[0].split()[1]), headers, body


def dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


def echoed(body: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(body)
    return result


def names(headers: list[list[str]]) -> list[str]:
    return [name for name, _ in headers]


def values(headers: list[list[str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name]


# --- path and query ---------------------------------------------------------------------------


def test_path_and_query_reach_the_backend_byte_for_byte(
    proxy: tuple[ServerThread, ProxyApp],
) -> None:
    target = (
        b"/acme-gym/cl%61sses/%2F..%2Fadmin/a%20b;v=1//x/../y/%7E?q=%zz&a=b+c&&e=%E2%82%AC&s=/?"
    )
    path, _, query = target.partition(b"?")
    status, _, body = raw_exchange(
        proxy[0].port,
        b"GET " + target + b" HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n\r\n",
    )
    assert status == 200
    seen = echoed(body)
    assert seen["raw_path"].encode() == path
    assert seen["query_string"].encode() == query


# --- request headers --------------------------------------------------------------------------

SPOOFING_REQUEST = (
    b"POST /acme-gym/enrol?x=1 HTTP/1.1\r\n"
    b"Host: portal.test\r\n"
    b"Connection: close, X-Secret\r\n"
    b"X-Secret: hop-only\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
    b"TE: trailers\r\n"
    b"Trailer: X-Checksum\r\n"
    b"Upgrade: foo\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: www.portal.test\r\n"
    b"X-Forwarded-Port: 443\r\n"
    b"Forwarded: for=6.6.6.6\r\n"
    b"X-Real-IP: 6.6.6.6\r\n"
    b"X-Request-ID: chosen-by-client\r\n"
    b"X-Edge-Tenant: other-gym\r\n"
    b"X-Edge-Mode: active\r\n"
    b"X-Edge-Anything: 1\r\n"
    b"X-HTTP-Method-Override: DELETE\r\n"
    b"X-HTTP-Method: DELETE\r\n"
    b"X-Method-Override: DELETE\r\n"
    b"X-Original-Method: DELETE\r\n"
    b"Cookie: session=mine\r\n"
    b"User-Agent: test-agent/1.0\r\n"
    b"X-Dup: one\r\n"
    b"X-Dup: two\r\n"
    b"X-Utf8: caf\xc3\xa9\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"hello"
)
ALWAYS_DROPPED = {
    "connection", "x-secret", "keep-alive", "proxy-connection", "proxy-authorization", "te",
    "trailer", "upgrade", "transfer-encoding", "x-edge-anything", "x-http-method-override",
    "x-http-method", "x-method-override", "x-original-method", "accept", "accept-encoding",
    "content-type",
}  # fmt: skip


def test_untrusted_client_headers_are_filtered_and_replaced(
    proxy: tuple[ServerThread, ProxyApp],
) -> None:
    status, response_headers, body = raw_exchange(proxy[0].port, SPOOFING_REQUEST)
    assert status == 200
    seen = echoed(body)
    headers = seen["headers"]
    assert not ALWAYS_DROPPED & set(names(headers))
    assert not {"forwarded", "x-real-ip", "x-forwarded-port"} & set(names(headers))
    assert values(headers, "host") == ["portal.test"]
    assert values(headers, "x-forwarded-for") == ["127.0.0.1"]
    assert values(headers, "x-forwarded-proto") == ["http"]
    assert values(headers, "x-forwarded-host") == ["portal.test"]
    assert values(headers, "x-edge-tenant") == ["acme-gym"]
    assert values(headers, "x-edge-mode") == ["setup"]
    assert values(headers, "cookie") == ["session=mine"]
    assert values(headers, "user-agent") == ["test-agent/1.0"]
    assert values(headers, "x-dup") == ["one", "two"]
    assert values(headers, "x-utf8") == ["caf\xc3\xa9"]  # the bytes unchanged (read as Latin-1)
    assert values(headers, "content-length") == ["5"]
    assert seen["length"] == 5 and seen["method"] == "POST"
    (request_id,) = values(headers, "x-request-id")
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert request_id != "chosen-by-client"
    assert [v for n, v in response_headers if n == b"x-request-id"] == [request_id.encode()]


def test_trusted_proxy_headers_are_kept_and_extended(trusting_proxy: ServerThread) -> None:
    status, response_headers, body = raw_exchange(trusting_proxy.port, SPOOFING_REQUEST)
    assert status == 200
    headers = echoed(body)["headers"]
    assert not ALWAYS_DROPPED & set(names(headers))
    assert values(headers, "x-forwarded-for") == ["6.6.6.6, 127.0.0.1"]
    assert values(headers, "x-forwarded-proto") == ["https"]
    assert values(headers, "x-forwarded-host") == ["www.portal.test"]
    assert values(headers, "x-forwarded-port") == ["443"]
    assert values(headers, "forwarded") == ["for=6.6.6.6, for=127.0.0.1"]
    assert values(headers, "x-real-ip") == ["6.6.6.6"]
    assert values(headers, "x-request-id") == ["chosen-by-client"]
    assert values(headers, "host") == ["portal.test"]
    assert values(headers, "x-edge-tenant") == ["acme-gym"]
    assert values(headers, "x-edge-mode") == ["setup"]
    assert [v for n, v in response_headers if n == b"x-request-id"] == [b"chosen-by-client"]


def test_each_request_gets_its_own_id(proxy: tuple[ServerThread, ProxyApp]) -> None:
    with httpx.Client(base_url=proxy[0].url) as client:
        ids = {client.get("/acme-gym/").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_no_headers_are_added_that_the_client_did_not_send(
    proxy: tuple[ServerThread, ProxyApp],
) -> None:
    request = (
        b"POST /acme-gym/x HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    status, _, body = raw_exchange(proxy[0].port, request)
    assert status == 200
    assert set(names(echoed(body)["headers"])) == {
        "host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
        "x-request-id", "x-edge-tenant", "x-edge-mode",
    }  # fmt: skip


def test_expect_100_continue_is_answered_by_the_proxy(proxy: tuple[ServerThread, ProxyApp]) -> None:
    with socket.create_connection(("127.0.0.1", proxy[0].port), WAIT) as sock:
        sock.sendall(
            b"PUT /acme-gym/file HTTP/1.1\r\nHost: portal.test\r\nConnection: close\r\n"
            b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"data")
        received = b""
        while data := sock.recv(65536):
            received += data
    seen = echoed(received.partition(b"\r\n\r\n")[2])
    assert seen["length"] == 4
    assert "expect" not in names(seen["headers"])


# --- response headers -------------------------------------------------------------------------


def test_response_hop_by_hop_headers_are_dropped(proxy: tuple[ServerThread, ProxyApp]) -> None:
    response = httpx.get(proxy[0].url + "/hop")
    assert response.status_code == 200
    assert response.headers["x-kept"] == "yes"
    for name in ("x-backend-secret", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert name not in response.headers
    assert len(response.headers.get_list("x-request-id")) == 1
    assert response.headers["x-request-id"] != "backend-made-this"


def test_date_and_server_come_once_from_the_backend(proxy: tuple[ServerThread, ProxyApp]) -> None:
    response = httpx.get(proxy[0].url + "/acme-gym/")
    assert response.headers.get_list("server") == ["uvicorn"]
    assert len(response.headers.get_list("date")) == 1


def test_every_set_cookie_survives(proxy: tuple[ServerThread, ProxyApp]) -> None:
    response = httpx.get(proxy[0].url + "/cookies")
    assert response.headers.get_list("set-cookie") == [
        "session=abc123; Path=/; HttpOnly",
        "theme=dark; Path=/; Max-Age=3600",
        "csrf=x%2Fy; Path=/; Secure; SameSite=Lax",
    ]


def test_cookies_never_pass_from_one_client_to_another(
    backend: tuple[ServerThread, Backend],
) -> None:
    # A host name, not an IP: a client's cookie jar (aiohttp's, for one) may ignore cookies
    # from IP hosts, and hide a leak that a named host shows.
    app = ProxyApp(f"http://localhost:{backend[0].port}")
    with serve_proxy(app) as server:
        with httpx.Client(base_url=server.url) as alice:
            assert alice.get("/cookies").headers.get_list("set-cookie")
        with httpx.Client(base_url=server.url) as bob:
            headers = bob.get("/acme-gym/account").json()["headers"]
    assert "cookie" not in names(headers)


def test_gzip_body_passes_byte_for_byte(proxy: tuple[ServerThread, ProxyApp]) -> None:
    with (
        httpx.Client() as client,
        client.stream(
            "GET", proxy[0].url + "/gzip", headers={"accept-encoding": "gzip"}
        ) as response,
    ):
        raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["content-length"] == str(len(GZIPPED))
    assert raw == GZIPPED


def test_not_modified_drops_the_announced_length() -> None:
    reply = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 42\r\n\r\n'
    with (
        ScriptedPortal(lambda _: reply, hang_up=True) as raw,
        serve_proxy(ProxyApp(raw.url)) as server,
    ):
        response = httpx.get(server.url + "/acme-gym/logo.png", headers={"if-none-match": '"v1"'})
    assert response.status_code == 304
    assert response.headers["etag"] == '"v1"'
    assert "content-length" not in response.headers


def test_head_keeps_the_backend_length(proxy: tuple[ServerThread, ProxyApp]) -> None:
    response = httpx.head(proxy[0].url + "/gzip")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(GZIPPED))
    assert response.content == b""


# --- streaming --------------------------------------------------------------------------------


def test_response_streams_before_the_backend_finishes(
    proxy: tuple[ServerThread, ProxyApp], signals: Signals
) -> None:
    with (
        httpx.Client(timeout=WAIT) as client,
        client.stream("GET", proxy[0].url + "/stream?id=s1") as response,
    ):
        chunks = response.iter_raw()
        first = next(chunks)
        assert first == b"first;"
        signals["s1:seen-first"].set()
        rest = b"".join(chunks)
    assert rest == b"last:released"


def _upload(size: int, gate: threading.Event | None) -> Iterator[bytes]:
    block = bytes(range(256)) * 4096  # 1 MiB
    for index in range(size // len(block)):
        if index == 1 and gate is not None:
            # The backend must hold the first MiB before the client sends the second.
            assert gate.wait(WAIT), "the backend saw nothing while the client was still sending"
        yield block


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_large_upload_streams_through(
    proxy: tuple[ServerThread, ProxyApp], signals: Signals, framing: str
) -> None:
    size = 50 * 1024 * 1024
    expected = hashlib.sha256(b"".join(_upload(size, None))).hexdigest()
    upload_id = f"up-{framing}"
    headers = {"content-length": str(size)} if framing == "content-length" else {}
    response = httpx.put(
        f"{proxy[0].url}/acme-gym/upload?id={upload_id}",
        content=_upload(size, signals[upload_id + ":first-byte"]),
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen["length"] == size
    assert seen["sha256"] == expected
    if framing == "content-length":
        assert values(seen["headers"], "content-length") == [str(size)]
        assert "transfer-encoding" not in names(seen["headers"])
    else:
        assert values(seen["headers"], "transfer-encoding") == ["chunked"]
        assert "content-length" not in names(seen["headers"])


# --- failures before the response -------------------------------------------------------------


def test_closed_port_is_a_fast_502() -> None:
    app = ProxyApp(f"http://127.0.0.1:{free_port()}")
    with serve_proxy(app) as server:
        started = time.monotonic()
        response = httpx.get(server.url + "/acme-gym/", timeout=WAIT)
        elapsed = time.monotonic() - started
    assert response.status_code == 502
    assert elapsed < 5
    # edge's own short page (tests/test_refusal_pages.py has its shapes), not a portal's.
    assert len(response.content) < 1024 and "could not be reached" in response.text
    assert response.headers["x-request-id"] == app.views[-1].request_id
    outcome = app.outcome("/acme-gym/?")
    assert outcome.status == 502 and outcome.error and "Connect" in outcome.error


def test_backend_slower_than_read_timeout_is_504(
    impatient: tuple[ServerThread, ProxyApp], signals: Signals
) -> None:
    response = httpx.get(impatient[0].url + "/slow?s=30&id=t504", timeout=WAIT)
    assert response.status_code == 504
    assert response.headers["x-request-id"]
    assert signals["t504:disconnected"].wait(WAIT), "the upstream request was left open"
    outcome = impatient[1].outcome("/slow?s=30&id=t504")
    assert outcome.status == 504 and outcome.error and "Timeout" in outcome.error


@pytest.mark.parametrize("body", [b"", b"{}"], ids=["no-body", "body"])
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_writes_are_sent_once_even_when_the_backend_hangs_up(method: str, body: bytes) -> None:
    with ScriptedPortal(lambda _: None) as raw, serve_proxy(ProxyApp(raw.url)) as server:
        response = httpx.request(method, server.url + "/acme-gym/enrol", content=body, timeout=WAIT)
        assert response.status_code == 502
        time.sleep(0.3)  # a retry, if any, would arrive right away
        assert len(raw.requests) == 1


def test_safe_methods_keep_their_single_retry() -> None:
    """Shows the write test above would catch a retry: a GET without a body is sent once more,
    on a fresh connection, when the portal hangs up without a word."""
    with ScriptedPortal(lambda _: None) as raw, serve_proxy(ProxyApp(raw.url)) as server:
        response = httpx.get(server.url + "/acme-gym/", timeout=WAIT)
        assert response.status_code == 502
        assert len(raw.requests) == 2


# --- failures after the response started ------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_backend_dying_mid_body_never_looks_complete(
    proxy: tuple[ServerThread, ProxyApp], framing: str
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{proxy[0].url}/broken?framing={framing}", timeout=WAIT)
    outcome = proxy[1].outcome(f"/broken?framing={framing}")
    assert outcome.status == 200
    assert outcome.error and outcome.bytes_out == 100


def test_backend_stalling_mid_body_never_looks_complete(
    impatient: tuple[ServerThread, ProxyApp], signals: Signals
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(impatient[0].url + "/stall?id=stall", timeout=WAIT)
    assert signals["stall:disconnected"].wait(WAIT)
    outcome = impatient[1].outcome("/stall?id=stall")
    assert outcome.error and "Timeout" in outcome.error


# --- the client going away --------------------------------------------------------------------


def test_client_leaving_mid_stream_cancels_the_upstream(
    impatient: tuple[ServerThread, ProxyApp], signals: Signals
) -> None:
    server, app = impatient
    with (
        httpx.Client(timeout=WAIT) as client,
        client.stream("GET", server.url + "/endless?id=e1") as response,
    ):
        assert next(response.iter_raw())
    assert signals["e1:disconnected"].wait(WAIT), "the backend kept streaming to nobody"
    assert app.outcome("/endless?id=e1").error == "client disconnected"
    # The pool holds one connection: it must be free again.
    assert httpx.get(server.url + "/acme-gym/", timeout=WAIT).status_code == 200


def test_client_leaving_before_the_answer_cancels_the_upstream(
    proxy: tuple[ServerThread, ProxyApp], signals: Signals
) -> None:
    with socket.create_connection(("127.0.0.1", proxy[0].port), WAIT) as sock:
        sock.sendall(b"GET /slow?s=30&id=w1 HTTP/1.1\r\nHost: portal.test\r\n\r\n")
        assert signals["w1:started"].wait(WAIT)
    assert signals["w1:disconnected"].wait(WAIT), "the backend kept working for nobody"
    outcome = proxy[1].outcome("/slow?s=30&id=w1")
    assert (outcome.status, outcome.error) == (499, "client disconnected")


def test_client_leaving_mid_upload_cancels_the_upstream(
    proxy: tuple[ServerThread, ProxyApp], signals: Signals
) -> None:
    with socket.create_connection(("127.0.0.1", proxy[0].port), WAIT) as sock:
        sock.sendall(
            b"POST /acme-gym/upload?id=u1 HTTP/1.1\r\nHost: portal.test\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b"a" * 100_000  # beyond edge's read-ahead
        )
        assert signals["u1:first-byte"].wait(WAIT)
    assert proxy[1].outcome("/acme-gym/upload?id=u1").error == "client disconnected"


def test_failures_leave_the_pool_usable(impatient: tuple[ServerThread, ProxyApp]) -> None:
    server, _ = impatient
    with httpx.Client(base_url=server.url, timeout=WAIT) as client:
        for path in ("/broken?framing=length", "/broken?framing=chunked", "/stall?id=pool"):
            with pytest.raises(httpx.RemoteProtocolError):
                client.get(path)
        assert client.get("/slow?s=30&id=pool-slow").status_code == 504
        for _ in range(3):
            assert client.get("/acme-gym/").status_code == 200


# --- the pure parts ---------------------------------------------------------------------------


PORTAL = edge_headers.Backend("http://portal:8000")


def _scope(headers: list[tuple[bytes, bytes]], client: str = "203.0.113.9") -> dict[str, Any]:
    return {"type": "http", "scheme": "http", "headers": headers, "client": (client, 5555)}


def test_client_view_ignores_forwarding_headers_from_strangers() -> None:
    scope = _scope([(b"host", b"portal.test"), (b"x-forwarded-for", b"1.1.1.1"),
                    (b"x-forwarded-proto", b"https"), (b"x-request-id", b"abc")])  # fmt: skip
    view = client_view(scope, trust_checker(["10.0.0.0/8"]))
    assert view[:3] == ("203.0.113.9", "http", "portal.test")
    assert view.request_id != "abc" and not view.trusted


def test_client_view_walks_back_through_trusted_proxies() -> None:
    scope = _scope(
        [(b"host", b"internal"), (b"x-forwarded-for", b"198.51.100.7, 10.0.0.5"),
         (b"x-forwarded-for", b"10.0.0.6"), (b"x-forwarded-proto", b"http, HTTPS"),
         (b"x-forwarded-host", b"portal.test"), (b"x-request-id", b" abc ")],
        client="10.0.0.7",
    )  # fmt: skip
    view = client_view(scope, trust_checker(["10.0.0.0/8"]))
    assert view == ClientView("198.51.100.7", "https", "portal.test", "abc", trusted=True)
    headers, framing = upstream_headers(scope, view, [], PORTAL)
    assert (b"x-forwarded-for", b"198.51.100.7, 10.0.0.5, 10.0.0.6, 10.0.0.7") in headers
    assert (b"host", b"internal") in headers
    assert framing == "none"


def test_transfer_encoding_wins_over_content_length() -> None:
    view = ClientView("1.2.3.4", "http", "h", "id")
    sent = [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]
    headers, framing = upstream_headers(_scope(sent, "1.2.3.4"), view, [], PORTAL)
    assert framing == "chunked"
    assert b"content-length" not in {name for name, _ in headers}
    assert [value for name, value in headers if name == b"transfer-encoding"] == [b"chunked"]


@pytest.mark.parametrize(
    ("sent", "keep_host", "host", "framing"),
    [
        ([(b"host", b"portal.test")], True, b"portal.test", "none"),
        ([(b"host", b"portal.test")], False, b"portal:8000", "none"),
        ([], True, b"portal:8000", "none"),  # HTTP/1.0 without a Host: the backend's
        ([(b"host", b"h"), (b"content-length", b"0")], True, b"h", "none"),
        ([(b"host", b"h"), (b"content-length", b"5")], True, b"h", "length"),
    ],
)
def test_the_backend_gets_exactly_one_host_and_the_body_framing(
    sent: list[tuple[bytes, bytes]], keep_host: bool, host: bytes, framing: str
) -> None:
    view = ClientView("1.2.3.4", "http", "h", "id")
    backend = edge_headers.Backend("http://portal:8000", keep_host=keep_host)
    headers, got = upstream_headers(_scope(sent, "1.2.3.4"), view, [], backend)
    assert [value for name, value in headers if name == b"host"] == [host]
    assert got == framing


def test_downstream_headers_keep_raw_values_and_drop_named_ones() -> None:
    raw = [(b"Set-Cookie", b"a=1"), (b"Connection", b"close, X-Hidden"), (b"X-Hidden", b"1"),
           (b"Set-Cookie", b"b=2"), (b"Content-Length", b"3")]  # fmt: skip
    assert downstream_headers(raw, 200, b"rid") == [
        (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"content-length", b"3"),
        (b"x-request-id", b"rid"),
    ]  # fmt: skip
    assert (b"content-length", b"3") not in downstream_headers(raw, 304, b"rid")
