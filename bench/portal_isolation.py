"""One portal hung, the other front served: ``python -m bench.portal_isolation``.

Starts a redis-server, two raw portals and `edge serve` (pool_size 64, connect_timeout 2 s,
read_timeout 5 s; every other [upstream] key at its default) on loopback. For ``--seconds``,
``--stuck`` clients ask the legacy front once a second each, and ``--steady`` clients ask the
new front back to back, each on a keep-alive connection. Twice: with both portals answering,
then with the legacy portal taking every request and never answering. Printed for each run:
the new front's answers (share that were 200) and its latency, p50 and p99, and what the
legacy front's clients got.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.procs import edge_serve
from tests.support.redis import RedisServer, unique_prefix
from tests.support.settings import LEGACY_HOST, NEW_HOST, settings_for

TENANT = "bench-gym"  # active: forwarded to the new portal
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawPortal:
    """Answers every request at once, or (``hung``) reads it and never answers."""

    def __init__(self, hung: bool) -> None:
        self.hung = hung
        self.serving: set[asyncio.Task[None]] = set()

    async def stop(self, server: asyncio.Server) -> None:
        server.close()
        for task in self.serving:
            task.cancel()
        await asyncio.gather(*self.serving, return_exceptions=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.serving.add(task)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if self.hung:
                    await reader.read()  # until edge gives up on it
                    return
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.serving.discard(task)


Answers = list[tuple[int, float]]  # (status, seconds) of each request


async def ask(port: int, host: str, path: str, until: float, pause: float) -> Answers:
    """Requests on one keep-alive connection until ``until``, ``pause`` seconds apart."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    answers: Answers = []
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            await reader.readexactly(length)
            answers.append((int(head.split(b" ", 2)[1]), time.perf_counter() - started))
            if pause:
                await asyncio.sleep(pause)
    finally:
        writer.close()
    return answers


async def run(legacy_hung: bool, options: argparse.Namespace, redis: RedisServer) -> None:
    portals = [RawPortal(hung) for hung in (legacy_hung, False)]
    servers = [await asyncio.start_server(p.serve, "127.0.0.1", 0) for p in portals]
    legacy, new = (f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers)
    prefix = unique_prefix()
    redis.cli("SET", f"{prefix}mode:{TENANT}", "active")
    upstream = {"pool_size": 64, "connect_timeout": 2.0, "read_timeout": 5.0}
    raw = settings_for(legacy, new, redis.url, prefix, upstream=upstream)
    with tempfile.TemporaryDirectory() as work:
        edge = await asyncio.to_thread(edge_serve, raw, Path(work))
        try:
            until = time.monotonic() + options.seconds
            stuck = [
                ask(edge.port, LEGACY_HOST, "/acme/", until, 1.0) for _ in range(options.stuck)
            ]
            steady = [
                ask(edge.port, NEW_HOST, f"/{TENANT}/", until, 0.0) for _ in range(options.steady)
            ]
            results = await asyncio.gather(*stuck, *steady)
        finally:
            edge.stop()
            for portal, server in zip(portals, servers, strict=True):
                await portal.stop(server)
    legacy_answers = [status for answers in results[: options.stuck] for status, _ in answers]
    new_answers = [answer for answers in results[options.stuck :] for answer in answers]
    ok = sum(1 for status, _ in new_answers if status == 200)
    cuts = statistics.quantiles([seconds for _, seconds in new_answers], n=100)
    print(f"legacy portal {'hung' if legacy_hung else 'answering'}:")
    print(
        f"  new front: {len(new_answers):,} answers, {ok / len(new_answers):.1%} 200, "
        f"p50 {1000 * cuts[49]:.1f} ms, p99 {1000 * cuts[98]:.1f} ms"
    )
    print(f"  legacy front: {dict(sorted(Counter(legacy_answers).items()))}")


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--seconds", type=float, default=20.0)
    arguments.add_argument("--stuck", type=int, default=100, help="clients of the legacy front")
    arguments.add_argument("--steady", type=int, default=10, help="clients of the new front")
    options = arguments.parse_args()
    redis = RedisServer().start()
    try:
        for legacy_hung in (False, True):
            asyncio.run(run(legacy_hung, options, redis))
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
