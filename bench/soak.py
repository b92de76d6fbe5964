"""Soak: customers served while slow and greedy clients attack edge: ``python -m bench.soak``.

edge serve (its default [server] limits) in front of the bench's nginx backend, with its own
redis-server. The customers run twice for the same time, undisturbed and then under the whole
mix: wrk on keep-alive connections, and one customer that opens a new connection for each
request. The mix: connections that send nothing, heads sent a byte every 2 s, uploads that
announce a megabyte and send two bytes, uploads that stream 100 KiB and then a byte every
body_idle_timeout less 5 s (they hold pool places), and GETs of made-up tenants on the legacy
front. Every loop ends with the run; the whole soak takes about twice ``--seconds`` plus a
minute.

It reports the customers' success rate and p99 for both runs side by side, edge's peak
resident memory and open descriptors, what edge's limits closed (its /metrics), and how many
keys Redis holds at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from bench import nginx
from bench.load import LoadResult, Wrk
from bench.procs import Service, peak_rss, reset_peak_rss, rss
from tests.support.ports import free_port
from tests.support.redis import RedisServer

REPO = Path(__file__).resolve().parent.parent
TENANT = "bench-gym"  # active: its new-front requests are forwarded (nginx's upload sink too)
CUSTOMER_PATH = f"/{TENANT}/classes"
NEW_HOST, LEGACY_HOST = "127.0.0.1", "localhost"  # the fronts, as in the bench's config
BODY_IDLE_TIMEOUT = 30.0  # edge's default: the dripping uploads send just inside it
RAMP = 12.0  # seconds the attack runs before the customers are measured: past header_timeout

_CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}
workers = 1
access_log = false
log_level = "warning"

[store]
url = "{redis}"

[legacy]
hosts = ["{legacy}"]
backend = "{backend}"
public_url = "http://{legacy}"

[new]
hosts = ["{new}"]
backend = "{backend}"
public_url = "http://{new}"

[admin]
host = "127.0.0.1"
port = {admin_port}
"""


@dataclass
class Tally:
    """One kind of client: how its requests or connections ended."""

    ends: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)  # customers: each request's latency

    @property
    def total(self) -> int:
        return sum(self.ends.values())

    def share(self, end: str) -> float:
        return self.ends[end] / self.total if self.total else 0.0

    def p99_ms(self) -> float:
        if not self.seconds:
            return 0.0
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


@dataclass
class Run:
    name: str
    wrk: LoadResult
    fresh: Tally
    peak_rss: int
    max_descriptors: int
    max_connections: int
    attackers: dict[str, Tally] = field(default_factory=dict)


# --- HTTP/1.1, just enough for the attackers and the fresh-connection customer -------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response with a Content-Length; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head[9:12])


async def _until_closed(reader: asyncio.StreamReader, within: float) -> str:
    """What edge answered (its status), or how it ended the connection: 'closed' without a
    word, 'reset', or 'open' if it did neither within ``within`` seconds."""
    data = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        if not data:
            return "open"
    except OSError:
        return "reset"
    return data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "closed"


def _get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def _upload_head(length: int) -> bytes:
    return (
        f"POST {nginx.UPLOAD_PATH} HTTP/1.1\r\nHost: {NEW_HOST}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


# --- the attackers: each a loop of connections until the run ends ---------------------------


Attack = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[str]]


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    return await _until_closed(reader, 120)


async def slow_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    head = _get(NEW_HOST, CUSTOMER_PATH)[:-2] + b"X-Slow: " + b"s" * 200 + b"\r\n\r\n"
    for byte in itertools.islice(head, 120):
        writer.write(bytes([byte]))
        end = await _until_closed(reader, 2.0)
        if end != "open":
            return end
    return "finished"


async def stalled_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    writer.write(_upload_head(1_000_000) + b"ab")
    return await _until_closed(reader, 120)


async def dripping_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    writer.write(_upload_head(1_000_000) + b"d" * 100_000)
    for _ in range(8):
        end = await _until_closed(reader, BODY_IDLE_TIMEOUT - 5)
        if end != "open":
            return end
        writer.write(b"d")
    return "finished"


async def attacker(port: int, attack: Attack, tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally.ends["refused"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            ending = asyncio.ensure_future(attack(reader, writer))
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({ending, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if ending in done:
                try:
                    tally.ends[ending.result()] += 1
                except (OSError, asyncio.IncompleteReadError):
                    tally.ends["reset"] += 1
            else:
                tally.ends["open at the end"] += 1
            for task in (ending, stopped):
                task.cancel()
        finally:
            writer.close()
        await asyncio.sleep(0.1)  # a new connection after each: the pressure stays on


async def made_up_tenants(port: int, tally: Tally, stop: asyncio.Event, rate: float) -> None:
    """GETs of invented tenants on the legacy front, one keep-alive connection, at ``rate``."""
    numbers = itertools.count()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                while not stop.is_set():
                    writer.write(_get(LEGACY_HOST, f"/made-up-{next(numbers)}/page"))
                    tally.ends[str(await _read_response(reader))] += 1
                    await asyncio.sleep(1 / rate)
            finally:
                writer.close()
        except (OSError, asyncio.IncompleteReadError):
            tally.ends["failed"] += 1
            await asyncio.sleep(0.1)


async def fresh_customer(port: int, tally: Tally, stop: asyncio.Event, interval: float) -> None:
    """A customer with a new connection for every request (a browser arriving)."""
    while not stop.is_set():
        started = time.perf_counter()
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(_get(NEW_HOST, CUSTOMER_PATH))
                    status = await _read_response(reader)
                finally:
                    writer.close()
            tally.ends["ok" if status == 200 else str(status)] += 1
            tally.seconds.append(time.perf_counter() - started)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            tally.ends[type(exc).__name__] += 1
        await asyncio.sleep(interval)


# --- a run ----------------------------------------------------------------------------------


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _client_connections(admin_port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("edge_client_connections "):
            return int(float(line.split()[1]))
    return 0


async def run(
    name: str,
    edge: Service,
    admin_port: int,
    wrk: Wrk,
    seconds: float,
    attackers: dict[str, tuple[int, Attack]],
    made_up_rate: float,
) -> Run:
    pid = edge.serving_pid()
    stop = asyncio.Event()
    tallies = {kind: Tally() for kind in attackers}
    tasks = [
        asyncio.create_task(attacker(edge.port, attack, tallies[kind], stop))
        for kind, (count, attack) in attackers.items()
        for _ in range(count)
    ]
    if made_up_rate:
        tallies["made-up tenants"] = Tally()
        tasks.append(
            asyncio.create_task(
                made_up_tenants(edge.port, tallies["made-up tenants"], stop, made_up_rate)
            )
        )
    if tasks:
        await asyncio.sleep(RAMP)
    reset_peak_rss(pid)
    fresh = Tally()
    customer_stop = asyncio.Event()
    customer = asyncio.create_task(fresh_customer(edge.port, fresh, customer_stop, 0.05))
    load = asyncio.create_task(asyncio.to_thread(wrk.run, edge.url + CUSTOMER_PATH, 20, seconds))
    most_descriptors = most_connections = 0
    while not load.done():
        most_descriptors = max(most_descriptors, _descriptors(pid))
        most_connections = max(
            most_connections, await asyncio.to_thread(_client_connections, admin_port)
        )
        await asyncio.sleep(0.5)
    customer_stop.set()
    stop.set()
    await asyncio.gather(customer, *tasks)
    return Run(
        name, load.result(), fresh, peak_rss(pid), most_descriptors, most_connections, tallies
    )


def _closed_by_limits(admin_port: int) -> dict[str, int]:
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    prefix = 'edge_client_connections_closed_total{reason="'
    return {
        line[len(prefix) :].partition('"')[0]: int(float(line.split()[-1]))
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def report(runs: list[Run], closed: dict[str, int], keys: int, start_rss: int) -> None:
    print("\ncustomers                  " + "".join(f"{run.name:>22}" for run in runs))
    rows: list[tuple[str, Callable[[Run], str]]] = [
        ("keep-alive (wrk -c20) req", lambda r: f"{r.wrk.requests:,}"),
        ("  success", lambda r: f"{_success(r.wrk):.3%}"),
        ("  p99", lambda r: f"{r.wrk.p99_ms:.1f} ms"),
        ("new connection each, req", lambda r: f"{r.fresh.total:,}"),
        ("  success", lambda r: f"{r.fresh.share('ok'):.3%}"),
        ("  p99", lambda r: f"{r.fresh.p99_ms():.1f} ms"),
        ("edge peak RSS", lambda r: f"{r.peak_rss / 2**20:.0f} MiB"),
        ("edge open descriptors, max", lambda r: f"{r.max_descriptors:,}"),
        ("edge client connections, max", lambda r: f"{r.max_connections:,}"),
    ]
    for label, value in rows:
        print(f"{label:<27}" + "".join(f"{value(run):>22}" for run in runs))
    print(f"\nedge RSS before both runs: {start_rss / 2**20:.0f} MiB")
    for run in runs:
        for kind, tally in run.attackers.items():
            ends = ", ".join(f"{end} {count:,}" for end, count in tally.ends.most_common())
            print(f"attack {kind:<17} {tally.total:>7,} connections/requests: {ends}")
    print(f"edge_client_connections_closed_total: {closed}")
    print(f"Redis keys at the end: {keys} (the customers' tenant's mode key, seeded: 1)")


def _success(result: LoadResult) -> float:
    good = result.requests - result.bad_status
    return good / (result.requests + result.socket_errors) if result.requests else 0.0


async def soak(seconds: float, scale: float, made_up_rate: float) -> None:
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp:
        work = Path(tmp)
        backend_port, port, admin_port = free_port(), free_port(), free_port()
        backend = Service(
            "backend",
            nginx.command(
                work / "backend", nginx.backend_config(work / "backend", backend_port, work / "x")
            ),
            backend_port,
            work / "backend.log",
            serves_in_child=True,
        ).start()
        store = RedisServer().start()
        edge: Service | None = None
        try:
            client = redis.Redis.from_url(store.url)
            client.set(f"edge:mode:{TENANT}", "active")
            config = work / "edge.toml"
            config.write_text(
                _CONFIG.format(
                    port=port,
                    admin_port=admin_port,
                    redis=store.url,
                    backend=backend.url,
                    legacy=LEGACY_HOST,
                    new=NEW_HOST,
                )
            )
            edge = Service(
                "edge",
                [sys.executable, "-m", "edge", "serve", "--config", str(config)],
                port,
                work / "edge.log",
                cwd=REPO,
            ).start()
            start_rss = rss(edge.serving_pid())
            wrk = Wrk(work)
            wrk.run(edge.url + CUSTOMER_PATH, 20, 2)  # warm
            mix: dict[str, tuple[int, Attack]] = {
                "silent": (round(300 * scale), silent),
                "slow head": (round(500 * scale), slow_head),
                "stalled upload": (round(300 * scale), stalled_upload),
                "dripping upload": (round(300 * scale), dripping_upload),
            }
            print(f"undisturbed run, {seconds:g} s", flush=True)
            runs = [await run("undisturbed", edge, admin_port, wrk, seconds, {}, 0)]
            print(f"under attack: {mix_summary(mix)}, {made_up_rate:g}/s made-up", flush=True)
            runs.append(
                await run("under attack", edge, admin_port, wrk, seconds, mix, made_up_rate)
            )
            closed = _closed_by_limits(admin_port)
            await asyncio.sleep(6)  # a flush (5 s) after the last request
            keys = int(client.dbsize())
            client.close()
            report(runs, closed, keys, start_rss)
        finally:
            if edge is not None:
                edge.stop()
            store.stop()
            backend.stop()


def mix_summary(mix: dict[str, tuple[int, Attack]]) -> str:
    return ", ".join(f"{count} {kind}" for kind, (count, _) in mix.items())


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--seconds", type=float, default=120.0, help="of each run")
    arguments.add_argument(
        "--scale", type=float, default=1.0, help="times the attackers (1: 1,400 connections)"
    )
    arguments.add_argument("--made-up-rate", type=float, default=100.0, help="GETs a second")
    options = arguments.parse_args()
    asyncio.run(soak(options.seconds, options.scale, options.made_up_rate))


if __name__ == "__main__":
    main()
