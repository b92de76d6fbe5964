"""How fast a mode change reaches every edge instance.

    .venv/bin/python -m bench.propagation [--store single|sentinel|cluster] [--instances 4]
        [--changes 100] [--raw-edits 100]

Starts Redis (one server; a master, a replica and three sentinels; or a three-master
Cluster) and N `edge serve` processes on loopback ports, then flips one tenant between legacy
and setup with `edge tenant set` (back with --force), while every instance is asked
concurrently, over and over, which mode it serves: a POST to the new front is refused in both
modes, with X-Edge-Mode naming the mode (no backend is involved). Then it flips another tenant
with raw SETs, as `redis-cli SET` would: no event announces those, Redis's own invalidation
messages do. Printed, over the changes:

- swap → all: from the compare-and-set in Redis (the audit entry's time, Redis's clock, the
  same host clock) until the last instance answered with the new mode;
- CLI → all: from starting `edge tenant set` until then (this includes the CLI's start-up);
- raw SET: from sending the SET until the last instance serves it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from redis.cluster import RedisCluster

from tests.support.ports import free_port, wait_for_port
from tests.support.redis import ClusterServers, RedisServer, SentinelServers

NEW_HOST = "portal.bench"
PREFIX = "bench:"
# Between two questions to one instance: the resolution of the measure, and what keeps the
# watchers from taking the CPU the instances need (2 cores here, shared with everything).
POLL_PAUSE = 0.002
CONFIG = """
[server]
host = "127.0.0.1"
port = {port}
access_log = false
log_level = "warning"
[store]
url = "{url}"
prefix = "{prefix}"
resync_interval = {resync}
[legacy]
hosts = ["parents.bench"]
backend = "http://127.0.0.1:9"
public_url = "https://parents.bench"
[new]
hosts = ["{new_host}"]
backend = "http://127.0.0.1:9"
public_url = "https://{new_host}"
[admin]
host = "127.0.0.1"
port = {admin_port}
"""


class Instance:
    """One `edge serve` process."""

    def __init__(self, workdir: Path, redis_url: str, resync: float) -> None:
        self.port = free_port()
        self.config = workdir / f"edge-{self.port}.toml"
        self.config.write_text(
            CONFIG.format(
                port=self.port,
                admin_port=free_port(),
                url=redis_url,
                prefix=PREFIX,
                resync=resync,
                new_host=NEW_HOST,
            )
        )
        self.log = workdir / f"edge-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)


class Watch:
    """Asks every instance concurrently which mode it serves, until each serves ``target``."""

    def __init__(self, client: httpx.AsyncClient, instances: list[Instance]) -> None:
        self.client = client
        self.instances = instances

    async def mode(self, instance: Instance, tenant: str) -> str:
        url = f"http://127.0.0.1:{instance.port}/{tenant}/"
        response = await self.client.post(url, headers={"Host": NEW_HOST})
        return response.headers.get("x-edge-mode") or f"no mode, {response.status_code}"

    async def until_all(self, tenant: str, target: str, within: float = 30.0) -> float:
        """The time.time() at which the last instance first answered with ``target``."""
        last: dict[int, str] = {}

        async def one(instance: Instance) -> float:
            while (answer := await self.mode(instance, tenant)) != target:
                last[instance.port] = answer
                await asyncio.sleep(POLL_PAUSE)
            last[instance.port] = answer
            return time.time()

        try:
            async with asyncio.timeout(within):
                return max(await asyncio.gather(*(one(i) for i in self.instances)))
        except TimeoutError:
            raise RuntimeError(
                f"{tenant} not {target} on every instance within {within} s: {last}"
            ) from None


async def cli_change(config: Path, tenant: str, mode: str) -> None:
    force = ["--force"] if mode == "legacy" else []
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "edge", "tenant", "set", tenant, mode, *force),
        *("--actor", "bench", "--config", str(config)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"edge tenant set failed: {stderr.decode()}")


class Store:
    """The Redis the instances use, and a client of the bench's own that edits it directly."""

    def __init__(self, kind: str, running: ExitStack) -> None:
        self.kind = kind
        self.client: Any
        if kind == "single":
            server = RedisServer().start()
            running.callback(server.stop)
            self.url, self.client = server.url, Redis(port=server.port, decode_responses=True)
        elif kind == "sentinel":
            sentinels = SentinelServers().start()
            running.callback(sentinels.stop)
            self.url = sentinels.url
            self.client = Redis(port=sentinels.master.port, decode_responses=True)
        else:
            cluster = ClusterServers(masters=3).start()
            running.callback(cluster.stop)
            self.url = cluster.url
            self.client = RedisCluster(
                host="127.0.0.1", port=cluster.servers[0].port, decode_responses=True
            )
        running.callback(self.client.close)

    def swap_time(self, tenant: str) -> float:
        entry = json.loads(self.client.lindex(f"{PREFIX}history:{tenant}", 0))
        return datetime.fromisoformat(entry["at"]).timestamp()


async def measure(args: argparse.Namespace, store: Store, instances: list[Instance]) -> None:
    config = instances[0].config
    unlimited = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=unlimited, trust_env=False) as client:
        watch = Watch(client, instances)
        await watch.until_all("bench-gym", "legacy", within=60)  # all up, tenant cached
        from_swap, from_cli = [], []
        for n in range(args.changes):
            target = "setup" if n % 2 == 0 else "legacy"
            started = time.time()
            seen, _ = await asyncio.gather(
                watch.until_all("bench-gym", target), cli_change(config, "bench-gym", target)
            )
            from_swap.append(seen - store.swap_time("bench-gym"))
            from_cli.append(seen - started)

        await watch.until_all("bench-raw", "legacy")
        raw = []
        for n in range(args.raw_edits):
            target = "setup" if n % 2 == 0 else "legacy"
            started = time.time()
            edit = asyncio.to_thread(store.client.set, f"{PREFIX}mode:bench-raw", target)
            seen, _ = await asyncio.gather(watch.until_all("bench-raw", target), edit)
            raw.append(seen - started)

    print(f"{len(instances)} edge instances, Redis: {store.kind}, loopback")
    if from_swap:
        print(f"  `edge tenant set` ({args.changes}), swap → all: {summary(from_swap)}")
        print(f"  `edge tenant set` ({args.changes}), CLI → all:  {summary(from_cli)}")
    print(
        f"  raw SET ({args.raw_edits}), edit → all:         {summary(raw)}   "
        f"(target p99 < 100 ms; resync_interval {args.resync:g} s)"
    )


def summary(seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return f"p50 {cuts[49]:7.1f} ms  p99 {cuts[98]:7.1f} ms  max {ms[-1]:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.propagation", description=__doc__)
    parser.add_argument("--store", choices=("single", "sentinel", "cluster"), default="single")
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--changes", type=int, default=100, help="through the CLI (0: none)")
    parser.add_argument("--raw-edits", type=int, default=100)
    parser.add_argument("--resync", type=float, default=2.0, help="[store].resync_interval")
    args = parser.parse_args()
    if args.changes == 1 or args.raw_edits < 2:
        parser.error("--changes (unless 0) and --raw-edits need at least 2 (for percentiles)")
    workdir = Path(tempfile.mkdtemp(prefix="edge-propagation-"))
    with ExitStack() as running:
        store = Store(args.store, running)
        instances = [Instance(workdir, store.url, args.resync) for _ in range(args.instances)]
        for instance in instances:
            instance.start()
            running.callback(instance.stop)
        for instance in instances:
            wait_for_port(instance.port, timeout=60)
        asyncio.run(measure(args, store, instances))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
