"""The load: wrk for request rates and latency, curl for the 100 MiB transfers."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# wrk calls done() once at the end; one JSON line is easier to trust than its human units.
_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "socket_errors": %d, '
    .. '"bad_status": %d}\\n',
    summary.requests, summary.duration, math.floor(latency:percentile(50)),
    math.floor(latency:percentile(99)), e.connect + e.read + e.write + e.timeout, e.status))
end
"""

# Numbers wrk's threads 0, 1, ... as `id`, for scripts that give each thread its own share.
THREAD_IDS = """
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
"""

# Each request picks one of `spread` tenants at random; each wrk thread seeds its own sequence.
_SPREAD = (
    THREAD_IDS
    + """
function init(args)
  math.randomseed(7919 + id)
end
request = function()
  return wrk.format(nil, string.format("/{prefix}%06d/classes", math.random(0, {spread} - 1)))
end
"""
)


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    bad_status: int  # neither 2xx nor 3xx
    cpu_seconds: float | None = None  # used by the server under test meanwhile

    @property
    def cpu_us(self) -> float | None:
        """CPU microseconds per request: the cost, much less noisy than the rate."""
        if self.cpu_seconds is None or not self.requests:
            return None
        return self.cpu_seconds / self.requests * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def clean(self) -> bool:
        return self.socket_errors == 0 and self.bad_status == 0


@dataclass(frozen=True)
class Transfer:
    size: int
    seconds: float

    @property
    def mib_s(self) -> float:
        return self.size / 2**20 / self.seconds


def tenant_id(prefix: str, number: int) -> str:
    """The tenant the spread script names for a number (it formats it the same way)."""
    return f"{prefix}{number:06d}"


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: sudo apt-get install wrk")
    return found


class Wrk:
    def __init__(self, directory: Path) -> None:
        self.binary = wrk_binary()
        self.report = directory / "report.lua"
        self.report.write_text(_REPORT)
        self.directory = directory

    def spread_script(self, prefix: str, spread: int) -> Path:
        script = self.directory / f"spread-{spread}.lua"
        request = _SPREAD.replace("{prefix}", prefix).replace("{spread}", str(spread))
        script.write_text(request + _REPORT)
        return script

    def run(
        self, url: str, connections: int, seconds: float, script: Path | None = None
    ) -> LoadResult:
        argv = [
            self.binary,
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script or self.report),
            url,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed on {url}: {done.stderr.strip() or done.stdout}")
        data = json.loads(lines[-1])
        return LoadResult(
            requests=data["requests"],
            seconds=data["duration_us"] / 1e6,
            p50_ms=data["p50_us"] / 1e3,
            p99_ms=data["p99_us"] / 1e3,
            socket_errors=data["socket_errors"],
            bad_status=data["bad_status"],
        )


def download(url: str) -> Transfer:
    return _curl([url], "size_download")


_OCTETS = "Content-Type: application/octet-stream"


def upload(url: str, source: Path) -> Transfer:
    """POST the file, streamed by curl from disk, without waiting for 100 Continue."""
    return _curl(
        ["-X", "POST", "-T", str(source), "-H", "Expect:", "-H", _OCTETS, url],
        "size_upload",
    )


def _curl(args: list[str], size_field: str) -> Transfer:
    written = f"%{{http_code}} %{{{size_field}}} %{{time_total}}"
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", written, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    status, size, seconds = [*done.stdout.split(), "0", "0", "0"][:3]
    if done.returncode != 0 or status != "200":
        raise RuntimeError(f"curl {' '.join(args)}: status {status}, {done.stderr.strip()}")
    return Transfer(int(size), float(seconds))
