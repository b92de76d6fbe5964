"""What a request costs in CPU instructions, counted: ``python -m bench.instructions``.

edge, its forward-only variant and the bare forwarder each run under valgrind's callgrind
behind the bench's nginx backend, with the tenant in Redis as in ``./bench/run``. wrk loads each
one while callgrind counts; the count over wrk's requests is the instructions per request.
Unlike a rate, an instruction count does not move with what else the machine is doing, so the
cost of the mode look-up and policy (edge over forward-only) shows without the noise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.load import Wrk
from bench.results import BARE, EDGE, FORWARD_ONLY, ROUTING_TARGET
from bench.stage import PATH, Stage, Target

_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class Count:
    instructions: int
    requests: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


def callgrind(directory: Path) -> list[str]:
    """The launcher: callgrind, counting nothing until told to (startup is not measured)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("valgrind is not installed: sudo apt-get install valgrind")
    return [
        valgrind,
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={directory}/callgrind.%p",
    ]


def count(wrk: Wrk, target: Target, connections: int, seconds: float, directory: Path) -> Count:
    """Instructions the target runs for wrk's requests, warmed up first."""
    url = target.url + PATH
    wrk.run(url, connections, min(seconds, 2.0))
    pid = str(target.service.serving_pid())
    control("--instr=on", pid)
    run = wrk.run(url, connections, seconds)
    control("--instr=off", pid)
    control("--dump", pid)
    if not run.clean or not run.requests:
        problem = f"{run.socket_errors} socket errors, {run.bad_status} bad statuses"
        raise RuntimeError(f"{target.name} under callgrind: {problem}")
    return Count(dumped(directory / f"callgrind.{pid}.1"), run.requests)


def control(option: str, pid: str) -> None:
    subprocess.run(["callgrind_control", option, pid], check=True, capture_output=True, timeout=60)


def dumped(path: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (totals := _TOTALS.findall(path.read_bytes())):
            return max(int(total) for total in totals)
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no totals to {path}")


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--seconds", type=float, default=10.0, help="of load per variant")
    arguments.add_argument("--connections", type=int, default=10)
    options = arguments.parse_args()
    # The same string hashes in every run, and so the same dict probes: counts repeat.
    os.environ["PYTHONHASHSEED"] = "0"
    with tempfile.TemporaryDirectory(prefix="edge-instructions-") as tmp:
        work = Path(tmp)
        print("starting nginx, redis-server and edge's variants under callgrind", flush=True)
        with Stage(work, peers=False, tenants=0, launcher=callgrind(work)) as stage:
            wrk = Wrk(work)
            counts = {
                target.name: count(wrk, target, options.connections, options.seconds, work)
                for target in stage.targets
                if target.name in (EDGE, FORWARD_ONLY, BARE)
            }
    print(f"instructions per request (callgrind), wrk -c{options.connections}:")
    for name, counted in counts.items():
        print(f"  {name:<18} {counted.per_request:>9,.0f}  ({counted.requests:,} requests)")
    routing = counts[EDGE].per_request / counts[FORWARD_ONLY].per_request - 1
    verdict = "met" if routing <= ROUTING_TARGET else "not met"
    print(
        f"mode look-up and policy: {routing:.1%} of forward-only's instructions "
        f"(target ≤ {ROUTING_TARGET:.0%}): {verdict}"
    )


if __name__ == "__main__":
    main()
