"""The mode cache at scale: an idle instance's Redis traffic, and a flood of made-up tenant ids.

    .venv/bin/python -m bench.mode_cache [--seen 1000,100000,1000000] [--flood 1000000]
        [--idle 60] [--source PATH]

Starts a redis-server with max(--seen) tenants stored (each `legacy`, a key of its own), then
for each number in --seen a fresh `edge serve` (one worker, the default [store] settings):
wrk asks it for that many distinct tenants (a GET to the new front: a redirect, no backend
involved) until its cache holds them all; then nothing comes in for --idle seconds, while
Redis's INFO commandstats counts the commands the instance sends. Printed: commands per minute
by command, and the instance's RSS.

The flood: a fresh instance asked for --flood distinct tenant ids that no key exists for
(made up, as an attacker would), until it has missed them all. Printed: the commands Redis
ran meanwhile, per 1,000 ids; the RSS after; the keys in Redis before and after (the request
path creates none); and the idle traffic afterwards.

--source runs `edge serve` from another checkout (its own .venv), to compare a build.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from redis import Redis

from bench.load import THREAD_IDS, wrk_binary
from bench.propagation import CONFIG, NEW_HOST, PREFIX
from tests.support.ports import free_port, wait_for_port
from tests.support.redis import RedisServer

REPO = Path(__file__).resolve().parent.parent
SETTLE = 5.0  # seconds after the last request before the idle count starts

# Each wrk thread asks for its share of ids, in turn, over and over: {count} ids in all.
_IDS = (
    THREAD_IDS
    + """
function init(args)
  n = id
end
request = function()
  n = n + {threads}
  return wrk.format(nil, string.format("/{name}%07d/", n % {count}))
end
"""
)


class Instance:
    """One `edge serve` process, with one worker."""

    def __init__(self, workdir: Path, redis_url: str, source: Path) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self.config = workdir / f"edge-{self.port}.toml"
        self.config.write_text(
            CONFIG.format(
                port=self.port,
                admin_port=self.admin_port,
                url=redis_url,
                prefix=PREFIX,
                resync=2.0,  # the default
                new_host=NEW_HOST,
            )
        )
        # This checkout runs on the bench's own interpreter; another on its own .venv.
        python = Path(sys.executable) if source == REPO else source / ".venv" / "bin" / "python"
        self.process = subprocess.Popen(
            [str(python), "-m", "edge", "serve", "--config", str(self.config)],
            cwd=source,
            stdout=subprocess.DEVNULL,
            stderr=(workdir / f"edge-{self.port}.log").open("wb"),
        )
        wait_for_port(self.port, timeout=60)

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on /metrics."""
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        labels = "" if "{" in name else r"(?:\{[^}]*\})?"
        pattern = re.compile(rf"^{re.escape(name)}{labels} (\S+)$", re.MULTILINE)
        return sum(float(value) for value in pattern.findall(text))

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) / 1024 if match else 0.0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def ask_for(instance: Instance, name: str, count: int, done: str, workdir: Path) -> float:
    """wrk asks for ``count`` distinct ids until ``done`` (a metric) reaches ``count``;
    returns the seconds it took."""
    script = workdir / f"ids-{name}-{count}.lua"
    threads = 2
    script.write_text(
        _IDS.replace("{threads}", str(threads))
        .replace("{name}", name)
        .replace("{count}", str(count))
    )
    started = time.monotonic()
    url = f"http://127.0.0.1:{instance.port}/"
    wrk = subprocess.Popen(
        [
            wrk_binary(),
            f"-t{threads}",
            "-c32",
            "-d3600s",
            "-s",
            str(script),
            "-H",
            f"Host: {NEW_HOST}",
            url,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        while instance.metric(done) < count:
            if wrk.poll() is not None:
                raise RuntimeError("wrk stopped early")
            time.sleep(1)
    finally:
        wrk.terminate()
        wrk.wait(30)
    return time.monotonic() - started


def commandstats(redis: Redis) -> Counter[str]:
    stats: dict[str, dict[str, int]] = redis.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()})


def idle_traffic(redis: Redis, seconds: float) -> Counter[str]:
    """Commands per minute Redis ran over ``seconds`` of nothing coming in, by command."""
    time.sleep(SETTLE)
    before = commandstats(redis)
    time.sleep(seconds)
    delta = commandstats(redis) - before
    delta.pop("info", None)  # the bench's own
    return Counter({name: round(calls * 60 / seconds) for name, calls in delta.items()})


def read_back(instance: Instance, redis: Redis) -> str:
    """Kill the instance's subscription, as a network cut would; how long its cache took to
    be read back once it subscribed again."""
    names = [
        f'edge_mode_resync_{name}{{pass="reconnect"}}'
        for name in ("seconds_count", "seconds_sum", "keys_read_total")
    ]
    runs, seconds, keys = (instance.metric(name) for name in names)
    redis.client_kill_filter(_type="pubsub")
    started = time.monotonic()
    while instance.metric(names[0]) == runs:
        if time.monotonic() - started > 600:
            return "read back after a reconnect: not within 10 minutes"
        time.sleep(0.5)
    seconds = instance.metric(names[1]) - seconds
    keys = instance.metric(names[2]) - keys
    return f"read back after a reconnect: {keys:,.0f} keys in {seconds:.2f} s"


def shown(per_minute: Counter[str]) -> str:
    by_command = ", ".join(f"{name} {calls}" for name, calls in per_minute.most_common())
    return f"{sum(per_minute.values())} a minute ({by_command or 'none'})"


def seed(redis: Redis, count: int) -> None:
    for start in range(0, count, 10_000):
        numbers = range(start, min(start + 10_000, count))
        redis.mset({f"{PREFIX}mode:t{n:07d}": "legacy" for n in numbers})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mode_cache", description=__doc__)
    parser.add_argument("--seen", default="1000,100000,1000000")
    parser.add_argument("--flood", type=int, default=1_000_000, help="0: no flood")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle counted")
    parser.add_argument("--source", type=Path, default=REPO, help="the checkout to run")
    args = parser.parse_args()
    seen = [int(n) for n in args.seen.split(",") if n]
    with ExitStack() as running, tempfile.TemporaryDirectory(prefix="edge-cache-") as tmp:
        workdir = Path(tmp)
        server = RedisServer().start()
        running.callback(server.stop)
        redis = Redis(port=server.port, decode_responses=True)
        seed(redis, max(seen, default=0))
        print(f"edge from {args.source}; Redis holds {redis.dbsize():,} keys", flush=True)
        for count in seen:
            instance = Instance(workdir, server.url, args.source)
            try:
                took = ask_for(instance, "t", count, "edge_tenants", workdir)
                idle = idle_traffic(redis, args.idle)
                print(
                    f"seen {count:>9,} tenants (in {took:.0f} s): idle Redis traffic "
                    f"{shown(idle)}; RSS {instance.rss_mib():.0f} MiB",
                    flush=True,
                )
                if args.source == REPO:
                    print(f"  {read_back(instance, redis)}", flush=True)
            finally:
                instance.stop()
        if args.flood:
            keys = redis.dbsize()
            instance = Instance(workdir, server.url, args.source)
            try:
                rss = instance.rss_mib()
                before = commandstats(redis)
                took = ask_for(instance, "zz", args.flood, "edge_mode_cache_misses_total", workdir)
                during = commandstats(redis) - before
                during.pop("info", None)
                per_thousand = sum(during.values()) * 1000 / args.flood
                print(
                    f"flood of {args.flood:,} made-up ids (in {took:.0f} s): Redis ran "
                    f"{sum(during.values()):,} commands ({per_thousand:.1f} per 1,000 ids: "
                    f"{dict(during.most_common(4))}); RSS {rss:.0f} → {instance.rss_mib():.0f} "
                    f"MiB; keys in Redis {keys:,} → {redis.dbsize():,}",
                    flush=True,
                )
                print(f"  then idle: {shown(idle_traffic(redis, args.idle))}", flush=True)
            finally:
                instance.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
