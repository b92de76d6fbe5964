"""Run the bench: start the stage, warm every target, measure in interleaved rounds, report."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.load import LoadResult, Wrk, download, upload
from bench.nginx import BIG_PATH, UPLOAD_PATH
from bench.procs import cpu_seconds, peak_rss, reset_peak_rss, rss
from bench.results import EDGE, Results, TenantRun
from bench.stage import PATH, SPREAD_PREFIX, Stage, Target, fetch

CONNECTIONS = (1, 50)
CASES = ("rates", "streaming", "tenants")


def _cases(value: str) -> tuple[str, ...]:
    cases = tuple(case.strip() for case in value.split(",") if case.strip())
    unknown = set(cases) - set(CASES)
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"cases are {', '.join(CASES)}; got {value!r}")
    return cases


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(
        prog="bench",
        description="edge side by side with nginx and the Python proxies, on loopback.",
    )
    arguments.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    arguments.add_argument(
        "--duration", type=float, default=5.0, help="seconds per wrk run (default 5)"
    )
    arguments.add_argument(
        "--tenants", type=int, default=100_000, help="tenants stored in Redis (default 100,000)"
    )
    arguments.add_argument(
        "--spread", type=int, default=10_000, help="tenants the requests spread over (10,000)"
    )
    arguments.add_argument(
        "--cases",
        type=_cases,
        default=CASES,
        help="comma-separated, of: rates (wrk at 1 and 50 connections), streaming, tenants "
        "(default: all)",
    )
    arguments.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the Python peers too (default; their packages are in bench/.venv)",
    )
    arguments.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also measure the edge in DIR (a git worktree of another commit), interleaved",
    )
    arguments.add_argument(
        "--smoke",
        action="store_true",
        help="a quick check that the bench works: one round, no Python peers and no chart "
        "(their packages live in bench/.venv)",
    )
    arguments.add_argument(
        "--profile", action="store_true", help="also record a py-spy flame graph of edge"
    )
    arguments.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results", help="results directory"
    )
    return arguments


def main(argv: list[str] | None = None) -> int:
    options = parser().parse_args(argv)
    if options.smoke:
        options.rounds = 1
        options.peers = False
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        print(f"starting nginx, redis-server and the proxies in {work}", flush=True)
        tenants = options.tenants if "tenants" in options.cases else 0
        with Stage(work, peers=options.peers, tenants=tenants, baseline=options.baseline) as stage:
            wrk = Wrk(work)
            results = measure(stage, wrk, options)
            if options.profile:
                profile(stage, wrk, options.out / "edge-profile.svg", options.duration)
    report.write(results, options.out, chart=not options.smoke)
    return 0


def measure(stage: Stage, wrk: Wrk, options: argparse.Namespace) -> Results:
    results = Results(options.rounds, options.duration, options.tenants, options.spread)
    seconds = options.duration
    many = stage.many_tenants
    spread = wrk.spread_script(SPREAD_PREFIX, options.spread)
    for target in stage.targets:  # fills pools and edge's mode cache
        wrk.run(target.url + PATH, 50, min(2.0, seconds))
    if many is not None:  # it starts cold: its first run shows its cache filling
        say(many.name, 50, results.add_tenants(tenant_run(wrk, many, spread, seconds, True)))
    for number in range(1, options.rounds + 1):
        print(f"round {number} of {options.rounds}", flush=True)
        if "rates" in options.cases:
            for target in stage.targets:
                for connections in CONNECTIONS:
                    run = load(wrk, target, connections, seconds)
                    say(target.name, connections, results.add_load(target.name, connections, run))
        if many is not None:
            say(many.name, 50, results.add_tenants(tenant_run(wrk, many, spread, seconds, False)))
        if "streaming" in options.cases:
            for target in stage.targets:
                if target.streams:
                    stream(results, target, stage.big_file)
    return results


def say(name: str, connections: int, run: LoadResult | TenantRun) -> None:
    load = run.load if isinstance(run, TenantRun) else run
    extra = f"  cache hit rate {run.hit_rate:.1%}" if isinstance(run, TenantRun) else ""
    problem = (
        "" if load.clean else f"  ERRORS: {load.socket_errors} socket, {load.bad_status} status"
    )
    print(
        f"  {name:<20} c={connections:<3} {load.rps:>9,.0f} req/s  p99 {load.p99_ms:7.2f} ms"
        f"  {load.cpu_us or 0:6.1f} CPU µs/req{extra}{problem}",
        flush=True,
    )


def tenant_run(wrk: Wrk, target: Target, script: Path, seconds: float, cold: bool) -> TenantRun:
    assert target.admin_port is not None
    hits, misses = cache_counts(target.admin_port)
    run = load(wrk, target, 50, seconds, script)
    hits_after, misses_after = cache_counts(target.admin_port)
    return TenantRun(run, hits_after - hits, misses_after - misses, cold)


def load(
    wrk: Wrk, target: Target, connections: int, seconds: float, script: Path | None = None
) -> LoadResult:
    """One wrk run against the target, with the CPU time its serving process used meanwhile."""
    pid = target.service.serving_pid()
    before = cpu_seconds(pid)
    run = wrk.run(target.url + PATH, connections, seconds, script)
    return dataclasses.replace(run, cpu_seconds=cpu_seconds(pid) - before)


def cache_counts(admin_port: int) -> tuple[int, int]:
    """The mode cache's hits and misses so far, from edge's Prometheus /metrics."""
    status, body = fetch(f"http://127.0.0.1:{admin_port}/metrics")
    if status != 200:
        raise RuntimeError(f"edge's /metrics answered {status}")
    values = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in _CACHE_COUNTERS:
            values[name] = int(float(value))
    if len(values) != len(_CACHE_COUNTERS):
        raise RuntimeError(f"edge's /metrics lacks {set(_CACHE_COUNTERS) - set(values)}")
    return values[_CACHE_COUNTERS[0]], values[_CACHE_COUNTERS[1]]


_CACHE_COUNTERS = ("edge_mode_cache_hits_total", "edge_mode_cache_misses_total")


def stream(results: Results, target: Target, source: Path) -> None:
    """One 100 MiB download and one 100 MiB upload, each with the serving process's peak RSS."""
    pid = target.service.serving_pid()
    results.idle_rss.setdefault(target.name, rss(pid))
    reset_peak_rss(pid)
    got = download(target.url + BIG_PATH)
    results.add_transfer(target.name, "download", got, peak_rss(pid))
    reset_peak_rss(pid)
    sent = upload(target.url + UPLOAD_PATH, source)
    results.add_transfer(target.name, "upload", sent, peak_rss(pid))


def profile(stage: Stage, wrk: Wrk, svg: Path, seconds: float) -> None:
    """A py-spy flame graph of edge under 50 connections (py-spy is in bench/.venv)."""
    edge = next(target for target in stage.targets if target.name == EDGE)
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(edge.service.serving_pid()),
            "--duration",
            str(round(seconds)),
            "--rate",
            "250",
            "--output",
            str(svg),
        ],
    )
    time.sleep(0.5)
    wrk.run(edge.url + PATH, 50, seconds)
    spy.wait()
    print(f"profile of edge: {svg}", flush=True)
