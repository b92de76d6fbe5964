"""Does the shadow move a customer's latency? ``python -m bench.shadow``

One nginx backend stands in for both portals; a redis-server holds one tenant in setup. Three
`edge serve` processes differ only in ``[shadow] sample_rate`` (0: off, a small share, every
read), and wrk loads each one's legacy front in turn, round after round, so that what else the
machine does falls on all of them alike. Printed: the customers' p50 and p99 side by side, and
how many reads each mirrored and dropped.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import redis

from bench import nginx
from bench.load import LoadResult, Wrk
from bench.procs import Service
from bench.stage import REPO, fetch
from tests.support.ports import free_port
from tests.support.redis import RedisServer

TENANT = "bench-gym"
PATH = f"/{TENANT}/classes"

_CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}
access_log = false

[store]
url = "{redis}"

[legacy]
hosts = ["127.0.0.1"]
backend = "{backend}"
public_url = "http://127.0.0.1"

[new]
hosts = ["localhost"]
backend = "{backend}"
public_url = "http://localhost"

[shadow]
sample_rate = {rate}

[admin]
host = "127.0.0.1"
port = {admin}
"""


def scrape(admin_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--seconds", type=float, default=10.0, help="of load per run")
    arguments.add_argument("--rounds", type=int, default=3)
    arguments.add_argument("--connections", type=int, default=10)
    arguments.add_argument("--rates", default="0,0.01,1", help="sample rates, comma-separated")
    options = arguments.parse_args()
    rates = [float(rate) for rate in options.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="edge-shadow-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        big = work / "big.bin"
        big.write_bytes(b"")
        backend_port = free_port()
        backend = Service(
            "backend",
            nginx.command(
                work / "backend", nginx.backend_config(work / "backend", backend_port, big)
            ),
            backend_port,
            work / "backend.log",
            serves_in_child=True,
        )
        stack.callback(backend.stop)
        backend.start()
        store = RedisServer().start()
        stack.callback(store.stop)
        client = redis.Redis.from_url(store.url)
        client.set(f"edge:mode:{TENANT}", "setup")
        client.close()
        edges: dict[float, tuple[Service, int]] = {}
        for rate in rates:
            port, admin = free_port(), free_port()
            config = work / f"edge-{rate}.toml"
            config.write_text(
                _CONFIG.format(
                    port=port, admin=admin, redis=store.url, backend=backend.url, rate=rate
                )
            )
            service = Service(
                f"edge shadow {rate}",
                [sys.executable, "-m", "edge", "serve", "--config", str(config)],
                port,
                work / f"edge-{rate}.log",
                {"PYTHONPATH": str(REPO)},
                cwd=REPO,
            )
            stack.callback(service.stop)
            edges[rate] = (service.start(), admin)
            status, body = fetch(service.url + PATH)
            if (status, body) != (200, nginx.SMALL_BODY):
                raise RuntimeError(f"sample_rate {rate}: GET {PATH} gave {status} {body[:100]!r}")
        wrk = Wrk(work)
        results: dict[float, list[LoadResult]] = {rate: [] for rate in rates}
        for _ in range(options.rounds):
            for rate, (service, _) in edges.items():
                run = wrk.run(service.url + PATH, options.connections, options.seconds)
                if not run.clean:
                    raise RuntimeError(f"sample_rate {rate}: {run}")
                results[rate].append(run)
        mirrored, dropped = (
            {rate: scrape(admin, f"edge_shadow_{name}_total") for rate, (_, admin) in edges.items()}
            for name in ("mirrored", "dropped")
        )
    print(
        f"customer latency on the legacy front of a setup tenant, wrk -c{options.connections}, "
        f"{options.rounds} rounds of {options.seconds:g} s (median of rounds):"
    )
    print(f"  {'sample_rate':>11}  {'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  mirrored  dropped")
    for rate, runs in results.items():
        rps, p50, p99 = (
            sorted(values)[len(values) // 2]
            for values in zip(*((r.rps, r.p50_ms, r.p99_ms) for r in runs), strict=True)
        )
        print(
            f"  {rate:>11g}  {rps:>8,.0f}  {p50:>7.2f}  {p99:>7.2f}  "
            f"{mirrored[rate]:>8,.0f}  {dropped[rate]:>7,.0f}"
        )


if __name__ == "__main__":
    main()
