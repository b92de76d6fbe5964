"""Redis of the test run's own on free ports: one server, a cluster, sentinels; never the
machine's shared redis on 6379."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from tests.support.ports import ServerDied, free_port, wait_for_port
from tests.support.waiting import eventually


def unique_prefix() -> str:
    """A key prefix of its own, so tests share one redis-server without flushing it."""
    return f"edge-test-{uuid.uuid4().hex[:12]}:"


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


def prefix_with_modes(redis: RedisServer, modes: dict[str, str]) -> str:
    """A key prefix of its own under which each tenant of ``modes`` has its mode key, written
    raw, as ops would with redis-cli."""
    prefix = unique_prefix()
    for tenant, mode in modes.items():
        redis.cli("SET", f"{prefix}mode:{tenant}", mode)
    return prefix
