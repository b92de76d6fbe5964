"""What relaying a WebSocket message costs edge: ``python -m bench.websocket_relay``.

Starts a redis-server, a uvicorn echo portal and `edge serve` on loopback, opens
``--sockets`` WebSockets through edge and sends ``--messages`` binary messages of ``--size``
bytes round the loop (client → edge → portal → edge → client) on each, one at a time. Printed:
edge's CPU time per round trip (user + system, from /proc), or with ``--callgrind`` the
instructions edge runs per round trip, counted by valgrind (immune to what else the machine
is doing; ~50 times slower, so use fewer messages).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bench.instructions import callgrind, control, dumped
from bench.procs import edge_serve
from tests.support.redis import RedisServer, unique_prefix
from tests.support.servers import ServerThread
from tests.support.settings import LEGACY_HOST, settings_for


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def round_trips(port: int, sockets: int, messages: int, size: int) -> None:
    async def one() -> None:
        uri = f"ws://{LEGACY_HOST}/acme/live"
        async with connect(uri, host="127.0.0.1", port=port, compression=None) as ws:
            for _ in range(messages):
                await ws.send(b"m" * size)
                await ws.recv()

    await asyncio.gather(*(one() for _ in range(sockets)))


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--sockets", type=int, default=10)
    arguments.add_argument("--messages", type=int, default=2000)
    arguments.add_argument("--size", type=int, default=64)
    arguments.add_argument("--callgrind", action="store_true", help="count instructions")
    options = arguments.parse_args()
    os.environ["PYTHONHASHSEED"] = "0"  # the same dict probes in every run: counts repeat
    redis = RedisServer().start()
    try:
        with ServerThread(echo) as portal, tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            launcher = callgrind(work) if options.callgrind else []
            raw = settings_for(portal.url, portal.url, redis.url, unique_prefix())
            edge = edge_serve(raw, work, launcher)
            try:
                pid = edge.serving_pid()
                asyncio.run(round_trips(edge.port, options.sockets, 20, options.size))  # warm
                cpu, started = cpu_seconds(pid), time.perf_counter()
                if options.callgrind:
                    control("--instr=on", str(pid))
                trips = options.sockets * options.messages
                asyncio.run(round_trips(edge.port, options.sockets, options.messages, options.size))
                elapsed, used = time.perf_counter() - started, cpu_seconds(pid) - cpu
                print(f"{options.sockets} WebSockets, {trips:,} round trips of {options.size} B:")
                if options.callgrind:
                    control("--instr=off", str(pid))
                    control("--dump", str(pid))
                    counted = dumped(work / f"callgrind.{pid}.1")
                    print(f"  edge runs {counted / trips:,.0f} instructions a round trip")
                else:
                    print(f"  {trips / elapsed:,.0f}/s, edge CPU {1e6 * used / trips:,.1f} µs each")
            finally:
                edge.stop()
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
