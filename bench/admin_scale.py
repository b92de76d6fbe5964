"""The admin plane at scale: paging and counting 100,000 tenants, bulk moves, a 10,000-row import.

    .venv/bin/python -m bench.admin_scale

Runs against a redis-server of its own on a free port (never the machine's shared one) and
prints medians; the admin API is called in process (httpx's ASGI transport), so the numbers
are the API's and the store's, not a network's.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from edge.admin.api import AdminApi
from edge.admin.parts import AdminParts
from edge.modes import ModeCache, RedisStore
from edge.moves.service import BulkMove, Moves
from tests.support.redis import RedisServer

TENANTS = 100_000
MOVES = 10_000
CONFIG = """
[store]
url = "{url}"
prefix = "import:"
[legacy]
hosts = ["parents.example.com"]
backend = "http://127.0.0.1:9"
public_url = "https://parents.example.com"
[new]
hosts = ["portal.example.com"]
backend = "http://127.0.0.1:9"
public_url = "https://portal.example.com"
"""


async def timed_get(client: httpx.AsyncClient, path: str, runs: int, **params: str) -> None:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        response = await client.get(path, params=params)
        samples.append(time.perf_counter() - started)
        response.raise_for_status()
    body = response.json()
    size = len(body["tenants"]) if "tenants" in body else body["total"]
    print(
        f"GET {path} {params}: median {statistics.median(samples) * 1000:.1f} ms, "
        f"max {max(samples) * 1000:.1f} ms over {runs} ({size} tenants)"
    )


async def listing(server: RedisServer) -> None:
    seed = redis.Redis(port=server.port)
    pipe = seed.pipeline(transaction=False)
    modes = ["legacy", "setup", "active"]
    for n in range(TENANTS):
        pipe.set(f"edge:mode:tenant-{n:06}", modes[n % 3])
    pipe.execute()
    store = RedisStore.from_url(server.url, timeout=5)
    parts = AdminParts.of(store, Moves(store))
    api = AdminApi(parts, ModeCache(store), "bench-token-0123456789").app()
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        await timed_get(client, "/api/tenants", 20, limit="100")
        await timed_get(client, "/api/tenants", 20, limit="1000")
        await timed_get(client, "/api/tenants", 20, mode="active", limit="100")
        await timed_get(client, "/api/tenants", 5, q="tenant-09999")
        started, pages, cursor = time.perf_counter(), 0, ""
        while True:
            query = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            cursor = (await client.get("/api/tenants", params=query)).json()["next_cursor"]
            pages += 1
            if cursor is None:
                break
        print(f"every page of {TENANTS}: {pages} pages in {time.perf_counter() - started:.2f} s")
        started = time.perf_counter()
        await store.count_modes()
        print(f"count_modes over {TENANTS}: {time.perf_counter() - started:.2f} s")
    await store.close()


async def moves(server: RedisServer) -> None:
    store = RedisStore.from_url(server.url, prefix="bulk:", timeout=5)
    pairs = [(f"gym-{n:05}", "setup") for n in range(MOVES)]
    for dry_run in (True, False):
        started = time.perf_counter()
        await Moves(store).move_many(BulkMove(pairs, actor="bench", dry_run=dry_run))
        what = "dry run" if dry_run else "moves"
        print(f"move_many, {MOVES} {what}: {time.perf_counter() - started:.2f} s")
    await store.close()


def import_file(server: RedisServer) -> None:
    folder = Path(tempfile.mkdtemp())
    config, rows = folder / "edge.toml", folder / "moves.csv"
    config.write_text(CONFIG.format(url=server.url))
    rows.write_text("tenant,mode\n" + "".join(f"gym-{n:05},setup\n" for n in range(MOVES)))
    for attempt in ("first", "again"):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "edge", "tenant", "import", str(rows), "--config", str(config)],
            capture_output=True,
            text=True,
            check=True,
        )
        took = time.perf_counter() - started
        summary = done.stdout.strip().splitlines()[-1]
        print(f"edge tenant import, {MOVES} rows, {attempt}: {took:.2f} s ({summary})")


def main() -> None:
    server = RedisServer().start()
    try:
        asyncio.run(listing(server))
        asyncio.run(moves(server))
        import_file(server)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
