"""The bench runs end to end, so that it cannot rot. Its numbers are not judged here: a test
machine is too noisy for that, and the bench's own ratios are for people to read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def bench(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` from the repository, as a contributor runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Each bench command has a deadline of its own (valgrind's is long on a busy machine): the
# test's outlasts it, so that a slow run fails with the command's output, not pytest's.
@pytest.mark.timeout(300)
def test_the_bench_measures_every_case_in_smoke_mode(tmp_path: Path) -> None:
    # --smoke: one round, without the Python peers and the chart, whose packages live in
    # bench/.venv rather than the test environment.
    done = bench("bench", "--smoke", "--duration", "1", "--out", str(tmp_path), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())

    load = summary["load"]
    assert set(load) == {"direct", "nginx", "edge", "edge forward-only", "bare forwarder"}
    for target, by_connections in load.items():
        assert set(by_connections) == {"1", "50"}, target
        for entry in by_connections.values():
            assert entry["clean"], (target, entry)  # every answer a 2xx, no socket error
            assert entry["rps"] > 0 and entry["p99_ms"] >= entry["p50_ms"] > 0
            assert entry["cpu_us"] > 0
    assert load["edge"]["50"]["vs_edge"] == 1.0

    assert set(summary["streaming"]) == {"direct", "nginx", "edge"}
    for target in ("direct", "nginx", "edge"):
        streaming = summary["streaming"][target]
        for direction in ("download", "upload"):
            assert streaming[direction]["mib_s"] > 0, (target, direction)
            assert streaming[direction]["peak_rss_mib"] > 0, (target, direction)

    tenants = summary["tenants"]
    assert tenants["stored"] == 100_000 and tenants["spread_over"] == 10_000
    assert tenants["cold"]["misses"] > 0  # the cache filled from Redis
    assert tenants["warm"]["hits"] > 0 and tenants["warm"]["clean"]
    assert 0 < tenants["warm"]["hit_rate"] <= 1

    checks = {check["name"] for check in summary["targets"]}
    assert any("forward-only" in name for name in checks)
    assert any("nginx" in name for name in checks)
    assert any("bare forwarder" in name for name in checks)
    assert "targets (ratios within this run)" in done.stdout


def test_the_in_process_routing_cost_runs() -> None:
    done = bench("bench.route_cost", "--requests", "200", "--rounds", "1", timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["edge", "edge", "routing"]
    assert all(line.endswith("µs/request") for line in lines[1:])


@pytest.mark.timeout(660)  # three variants under valgrind, each started slowly
def test_the_instruction_count_runs() -> None:
    # Once callgrind starts counting, it translates the code again: the first requests take
    # about a second on a busy machine, so a one-second run may count none.
    done = bench("bench.instructions", "--seconds", "3", "--connections", "2", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counted = [line.split() for line in done.stdout.splitlines() if line.endswith("requests)")]
    assert [words[0] for words in counted] == ["edge", "edge", "bare"]
    assert all(int(words[-3].replace(",", "")) > 0 for words in counted)
    assert "of forward-only's instructions" in done.stdout


def test_the_soak_runs_in_smoke_mode() -> None:
    """A few seconds of each run, a few attackers of each kind: it reports every figure."""
    done = bench(
        "bench.soak", "--seconds", "3", "--scale", "0.02", "--made-up-rate", "10", timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for figure in ("  success", "  p99", "edge peak RSS", "edge open descriptors, max"):
        assert done.stdout.count(figure) >= 1, figure
    [slow_heads] = [line for line in done.stdout.splitlines() if "attack slow head" in line]
    assert ": 408 " in slow_heads or ", 408 " in slow_heads  # header_timeout answered them
    assert "Redis keys at the end: 1 " in done.stdout


def test_the_propagation_bench_times_raw_edits() -> None:
    done = bench(
        "bench.propagation", "--instances", "2", "--changes", "0", "--raw-edits", "4", timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "raw SET (4), edit → all:" in done.stdout


def test_the_mode_cache_bench_counts_idle_traffic_and_a_flood() -> None:
    done = bench("bench.mode_cache", "--seen", "200", "--flood", "2000", "--idle", "3", timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "seen       200 tenants" in done.stdout
    assert "keys in Redis 200 → 200" in done.stdout  # the flood created none


def test_the_shadow_latency_bench_runs() -> None:
    done = bench("bench.shadow", "--seconds", "1", "--rounds", "1", "--rates", "0,1", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert [row[0] for row in rows] == ["0", "1"]
    assert float(rows[0][4].replace(",", "")) == 0  # off: nothing mirrored
    assert float(rows[1][4].replace(",", "")) > 0  # the control: every read mirrored
