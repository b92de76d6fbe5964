"""Everything the bench measures, started on loopback in a temporary directory and stopped after:
the nginx backend, a redis-server with the tenants, and each proxy in front of the backend."""

from __future__ import annotations

import http.client
import sys
import urllib.parse
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import nginx
from bench.load import tenant_id
from bench.procs import Service
from tests.support.ports import free_port
from tests.support.redis import RedisServer

TENANT = "bench-gym"  # active: the new front forwards it, the steady-state production case
PATH = "/bench-gym/classes"
SPREAD_PREFIX = "bench-t"  # the many-tenants case: bench-t000000 ...
BIG_SIZE = 100 * 2**20
ADMIN_TOKEN = "bench-admin-token-0123456789"
REPO = Path(__file__).resolve().parent.parent

_EDGE_CONFIG = """\
[server]
host = "127.0.0.1"
port = 0  # each instance gets its own through EDGE_SERVER__PORT
workers = 1
log_level = "info"
access_log = true

[store]
url = "{redis}"

[legacy]
hosts = ["localhost"]
backend = "{backend}"
public_url = "http://localhost"

[new]
hosts = ["127.0.0.1"]
backend = "{backend}"
public_url = "http://127.0.0.1"

[admin]
host = "127.0.0.1"
port = 0
token = "{token}"
"""


@dataclass
class Target:
    name: str
    service: Service
    admin_port: int | None = None  # edge with its routing: where /metrics is
    streams: bool = True  # in the streaming case (the forwarding variants are edge's leg)

    @property
    def url(self) -> str:
        return self.service.url


class Stage:
    """``with Stage(...) as stage``: every process running, checked, and stopped at the end."""

    def __init__(
        self,
        work: Path,
        *,
        peers: bool,
        tenants: int,
        baseline: Path | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        self.work = work
        self.peers = peers
        self.tenants = tenants
        self.baseline = baseline
        self.launcher = list(launcher)  # what edge and its variants run under (valgrind)
        self.big_file = work / "big.bin"
        self.targets: list[Target] = []  # measured with wrk, in this order every round
        self.many_tenants: Target | None = None
        self._stack = ExitStack()

    def __enter__(self) -> Stage:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        with self.big_file.open("wb") as big:  # written, not sparse: in the page cache from now
            for _ in range(BIG_SIZE // 2**20):
                big.write(bytes(2**20))
        backend_port, proxy_port = free_port(), free_port()
        backend_config = nginx.backend_config(self._dir("backend"), backend_port, self.big_file)
        backend = self._nginx("backend", backend_port, backend_config)
        self.targets.append(Target("direct", backend))
        proxy = self._nginx(
            "nginx", proxy_port, nginx.proxy_config(self._dir("nginx"), proxy_port, backend_port)
        )
        self.targets.append(Target("nginx", proxy))

        store = RedisServer().start()
        self._stack.callback(store.stop)
        self._seed(store.url)
        config = self.work / "edge.toml"
        config.write_text(
            _EDGE_CONFIG.format(redis=store.url, backend=backend.url, token=ADMIN_TOKEN)
        )
        serve = ["-m", "edge", "serve", "--config", str(config)]
        self.targets.append(self._edge("edge", serve))
        if self.baseline is not None:
            self.targets.append(self._edge("edge baseline", serve, source=self.baseline))
        forward_only = ["-m", "bench.forward_only", "--config", str(config)]
        for name, args in (
            ("edge forward-only", forward_only),
            ("bare forwarder", [*forward_only, "--bare"]),
        ):
            variant = self._edge(name, args)
            self.targets.append(Target(name, variant.service, streams=False))
        if self.peers:
            for name, app in (
                ("asgiproxy", "bench.peers.asgiproxy_app:app"),
                ("fastapi-proxy-lib", "bench.peers.fastapi_proxy_lib_app:app"),
            ):
                self.targets.append(self._peer(name, app, backend.url))
        if self.tenants:
            self.many_tenants = self._edge("edge, many tenants", serve)
        for target in self.targets:
            check(target)
        if self.many_tenants is not None:
            check(self.many_tenants)

    def _dir(self, name: str) -> Path:
        return self.work / name

    def _run(
        self,
        name: str,
        argv: list[str],
        port: int,
        env: dict[str, str] | None = None,
        serves_in_child: bool = False,
        cwd: Path = REPO,
        timeout: float = 30,
    ) -> Service:
        log = self.work / f"{name.replace(' ', '-').replace(',', '')}.log"
        service = Service(name, argv, port, log, env, serves_in_child, cwd)
        self._stack.callback(service.stop)
        return service.start(timeout)

    def _nginx(self, name: str, port: int, config: str) -> Service:
        return self._run(name, nginx.command(self._dir(name), config), port, serves_in_child=True)

    def _edge(self, name: str, args: list[str], source: Path = REPO) -> Target:
        """edge serve, or a variant, from the bench's config on ports of its own."""
        port, admin_port = free_port(), free_port()
        env = {
            "PYTHONPATH": str(source),
            "EDGE_SERVER__PORT": str(port),
            "EDGE_ADMIN__PORT": str(admin_port),
        }
        argv = [*self.launcher, sys.executable, *args]
        # Under valgrind, Python starts some 20 times slower.
        service = self._run(name, argv, port, env, cwd=source, timeout=300 if self.launcher else 30)
        return Target(name, service, admin_port=admin_port)

    def _peer(self, name: str, app: str, backend: str) -> Target:
        """A peer under the same uvicorn as edge: one process, uvloop, httptools, no access log."""
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        env = {"PYTHONPATH": str(REPO), "BENCH_BACKEND": backend}
        return Target(name, self._run(name, argv, port, env))

    def _seed(self, url: str) -> None:
        """The bench tenant and the many tenants, all active, as `redis-cli SET` would."""
        client = redis.Redis.from_url(url)
        try:
            client.set(f"edge:mode:{TENANT}", "active")
            for start in range(0, self.tenants, 10_000):
                numbers = range(start, min(start + 10_000, self.tenants))
                client.mset({f"edge:mode:{tenant_id(SPREAD_PREFIX, n)}": "active" for n in numbers})
        finally:
            client.close()


def fetch(url: str) -> tuple[int, bytes]:
    """One GET, redirects not followed."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("GET", parts.path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check(target: Target) -> None:
    """Refuse to measure a target that does not answer with the backend's body (or, for edge,
    does not route: a tenant without a key is legacy, and the new front sends it back)."""
    status, body = fetch(target.url + PATH)
    if status != 200 or body != nginx.SMALL_BODY:
        raise RuntimeError(f"{target.name}: GET {PATH} gave {status} {body[:100]!r}")
    if target.admin_port is not None:
        status, _ = fetch(target.url + "/no-such-gym/")
        if status != 302:
            raise RuntimeError(f"{target.name}: a legacy tenant on the new front gave {status}")
