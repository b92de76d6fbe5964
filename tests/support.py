"""Real things on loopback for the tests: a redis-server on a free port, uvicorn servers."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bound_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def unique_prefix() -> str:
    """A key prefix of its own, so tests share one redis-server without flushing it."""
    return f"edge-test-{uuid.uuid4().hex[:12]}:"


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


class RedisServer:
    """A redis-server of the test run's own, never the machine's shared one on 6379."""

    def __init__(self, port: int | None = None, args: Sequence[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (the test script installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="edge-redis-")
        self.args = list(args)  # after the defaults, so they win
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = Path(self.dir, "redis.log")
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self.dir,
                    "--loglevel",
                    "warning",
                    *self.args,
                ],
                stdout=output,
            )
        try:
            wait_for_port(self.port, process=self.process)
        except ServerDied as died:
            raise ServerDied(f"{died}: {log.read_text().strip()}") from None
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server, as ops would."""
        return redis_cli(self.port, *args)

    def transaction(self, *commands: tuple[str, ...]) -> str:
        """Run the commands in one MULTI/EXEC, from one redis-cli session: all at one instant."""
        lines = ["MULTI", *(" ".join(command) for command in commands), "EXEC"]
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port)],
            input="\n".join(lines) + "\n",
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


class NotFormed(RuntimeError):
    """``redis-cli --cluster create`` failed, most often because a node died meanwhile."""


class ClusterServers:
    """A Redis Cluster on free ports, joined by ``redis-cli --cluster create``: ``masters``
    masters, each with ``replicas`` replicas. A master that fails is replaced by its replica;
    without one, the live masters keep serving their own slots.
    """

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.masters = masters
        self.replicas = replicas
        self.servers = self._new_servers()

    def _new_servers(self) -> list[RedisServer]:
        cluster_args = (
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"),
        )
        # The bus port is given: the default, port + 10000, may be taken or past 65535.
        return [
            RedisServer(args=(*cluster_args, "--cluster-port", str(free_port())))
            for _ in range(self.masters * (1 + self.replicas))
        ]

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{server.port}" for server in self.servers[:2])
        return f"redis+cluster://{seeds}"

    def start(self, attempts: int = 3) -> ClusterServers:
        # A port found free may be taken before its node binds it (by another client's
        # ephemeral port, such as one of the bus links between the nodes started first),
        # and that node dies: the cluster is then formed anew on new ports.
        for attempt in range(1, attempts + 1):
            try:
                self._form()
                break
            except (ServerDied, NotFormed):
                self.stop()
                if attempt == attempts:
                    raise
                self.servers = self._new_servers()
        eventually(self._ready, 30)
        return self

    def _form(self) -> None:
        for server in self.servers:
            server.start()
        nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
        replicas = ("--cluster-replicas", str(self.replicas))
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, *replicas, "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise NotFormed(f"redis-cli --cluster create failed:\n{created.stdout}")

    def _ready(self) -> bool:
        for server in self.servers:
            replication = server.cli("INFO", "replication")
            if "cluster_state:ok" not in server.cli("CLUSTER", "INFO"):
                return False
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return False
        return True

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def cli(self, *args: str) -> str:
        """redis-cli in cluster mode: it follows MOVED to the node that holds the key."""
        return redis_cli(self.servers[0].port, "-c", *args)


class SentinelServers:
    """A master, a replica and three sentinels that watch them as ``master_name``."""

    def __init__(self, master_name: str = "edge-test", sentinels: int = 3) -> None:
        self.master_name = master_name
        # Either may serve a replica: send it the data at once, not after the default 5 s.
        at_once = ("--repl-diskless-sync-delay", "0")
        self.master = RedisServer(args=at_once)
        self.replica = RedisServer(
            args=(*at_once, "--replicaof", "127.0.0.1", str(self.master.port))
        )
        self.ports = [free_port() for _ in range(sentinels)]
        self.dir = Path(tempfile.mkdtemp(prefix="edge-sentinel-"))
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def start(self) -> SentinelServers:
        self.master.start()
        self.replica.start()
        eventually(lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"), 30)
        quorum = len(self.ports) // 2 + 1
        for port in self.ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {self.master_name} 500\n"
                f"sentinel failover-timeout {self.master_name} 2000\n"
            )
            command = [self.master.binary, str(conf), "--sentinel"]
            self.sentinels.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
            wait_for_port(port)
        eventually(self._all_watching, 30)  # each sentinel knows the replica and the others
        return self

    def _all_watching(self) -> bool:
        others = str(len(self.ports) - 1)
        return all(
            (seen := self.seen_by(port)).get("num-slaves") == "1"
            and seen.get("num-other-sentinels") == others
            for port in self.ports
        )

    def seen_by(self, port: int) -> dict[str, str]:
        """What the sentinel on ``port`` knows of the master."""
        lines = redis_cli(port, "SENTINEL", "MASTER", self.master_name).splitlines()
        return dict(zip(lines[::2], lines[1::2], strict=False))

    def master_port(self) -> int:
        """The master's port, by every sentinel's account (0 while they disagree)."""
        ports = {int(self.seen_by(port)["port"]) for port in self.ports}
        return ports.pop() if len(ports) == 1 else 0

    def stop(self) -> None:
        for process in self.sentinels:
            process.kill()
            process.wait()
        self.sentinels = []
        self.master.stop()
        self.replica.stop()


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


def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``check()`` is true, failing after a generous ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
        time.sleep(0.02)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def issue_certificate(name: str, cwd: Path) -> None:
    """``name``.key and ``name``.crt for 127.0.0.1, signed by the CA in ``cwd``."""
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    subject = ("-subj", "/CN=127.0.0.1")
    openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", *subject, cwd=cwd)
    (cwd / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", f"{name}.crt"),
        cwd=cwd,
    )


def make_certificates(cwd: Path) -> Path:
    """A test CA (ca.crt, ca.key) in ``cwd``, and server.* and client.* signed by it."""
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca = ("-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=edge test CA")
    openssl("req", "-x509", *key, *ca, cwd=cwd)
    issue_certificate("server", cwd)
    issue_certificate("client", cwd)
    return cwd


def data_file(name: str) -> Path:
    return Path(__file__).with_name("data") / name


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
