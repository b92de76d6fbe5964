"""What one bench run measured, and its summary: medians, ratios to edge, edge's targets."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench.load import LoadResult, Transfer
from bench.nginx import nginx_binary

EDGE = "edge"
FORWARD_ONLY = "edge forward-only"
BARE = "bare forwarder"
PEERS = ("asgiproxy", "fastapi-proxy-lib")
MIB = 2**20
# The target: the mode look-up and policy cost at most 5% of the same build forwarding alone.
ROUTING_TARGET = 0.05


@dataclass(frozen=True)
class TenantRun:
    load: LoadResult
    hits: int
    misses: int
    cold: bool

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass
class Results:
    rounds: int
    duration: float
    tenants: int
    spread: int
    load: dict[str, dict[int, list[LoadResult]]] = field(default_factory=dict)
    transfers: dict[str, dict[str, list[tuple[Transfer, int]]]] = field(default_factory=dict)
    idle_rss: dict[str, int] = field(default_factory=dict)
    tenant_runs: list[TenantRun] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def add_load(self, target: str, connections: int, run: LoadResult) -> LoadResult:
        self.load.setdefault(target, {}).setdefault(connections, []).append(run)
        return run

    def add_tenants(self, run: TenantRun) -> TenantRun:
        self.tenant_runs.append(run)
        return run

    def add_transfer(self, target: str, direction: str, transfer: Transfer, peak: int) -> None:
        self.transfers.setdefault(target, {}).setdefault(direction, []).append((transfer, peak))

    def summary(self) -> dict[str, Any]:
        load = {
            target: {str(c): _load_summary(runs) for c, runs in by_connections.items()}
            for target, by_connections in self.load.items()
        }
        for by_connections in load.values():
            for c, entry in by_connections.items():
                edge = load.get(EDGE, {}).get(c)
                entry["vs_edge"] = entry["rps"] / edge["rps"] if edge and edge["rps"] else None
        return {
            "date": self.started.isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {
                "rounds": self.rounds,
                "seconds_per_run": self.duration,
                "connections": sorted({c for runs in self.load.values() for c in runs}),
                "load": "wrk --latency, 2 threads (1 at 1 connection), keep-alive, 26-byte body",
            },
            "load": load,
            "streaming": {
                target: self._streaming(target, by_direction)
                for target, by_direction in self.transfers.items()
            },
            "tenants": self._tenants(load),
            "targets": targets(load),
        }

    def _streaming(
        self, target: str, by_direction: dict[str, list[tuple[Transfer, int]]]
    ) -> dict[str, Any]:
        summary: dict[str, Any] = {"idle_rss_mib": self.idle_rss.get(target, 0) / MIB}
        for direction, runs in by_direction.items():
            summary[direction] = {
                "mib_s": statistics.median(t.mib_s for t, _ in runs),
                "peak_rss_mib": max(peak for _, peak in runs) / MIB,
                "runs_mib_s": [round(t.mib_s, 1) for t, _ in runs],
            }
        return summary

    def _tenants(self, load: dict[str, Any]) -> dict[str, Any]:
        cold = [run for run in self.tenant_runs if run.cold]
        warm = [run for run in self.tenant_runs if not run.cold]
        edge = load.get(EDGE, {}).get("50")
        summary: dict[str, Any] = {"stored": self.tenants, "spread_over": self.spread}
        if cold:
            summary["cold"] = _tenant_summary(cold)
        if warm:
            summary["warm"] = _tenant_summary(warm)
            summary["warm"]["vs_edge_one_tenant"] = (
                summary["warm"]["rps"] / edge["rps"] if edge else None
            )
        return summary


def _load_summary(runs: list[LoadResult]) -> dict[str, Any]:
    return {
        "rps": statistics.median(run.rps for run in runs),
        "p50_ms": statistics.median(run.p50_ms for run in runs),
        "p99_ms": statistics.median(run.p99_ms for run in runs),
        "cpu_us": statistics.median(run.cpu_us or 0.0 for run in runs),
        "clean": all(run.clean for run in runs),
        "runs_rps": [round(run.rps) for run in runs],
    }


def _tenant_summary(runs: list[TenantRun]) -> dict[str, Any]:
    hits = sum(run.hits for run in runs)
    misses = sum(run.misses for run in runs)
    return {
        **_load_summary([run.load for run in runs]),
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
    }


def targets(load: dict[str, Any]) -> list[dict[str, Any]]:
    """edge's targets, each a ratio of edge to another target within this run.

    Each is judged on requests/s, as the target states it; ``by_cpu`` gives the same ratio from
    the CPU each spends per request (the other's over edge's), which other load on the
    machine moves far less. ``rounds`` is the ratio in each round (interleaved, so each pair
    ran minutes apart at most): its spread is how far one run can be trusted.
    """
    checks: list[dict[str, Any]] = []
    edge = load.get(EDGE, {}).get("50")
    if edge is None:
        return checks

    def ratio(name: str, wording: str, goal: float | None, unit: str = "x") -> None:
        other = load[name]["50"]
        value = edge["rps"] / other["rps"]
        by_cpu = other["cpu_us"] / edge["cpu_us"] if edge["cpu_us"] else 0.0
        rounds = [e / o for e, o in zip(edge["runs_rps"], other["runs_rps"], strict=True) if o]
        shown = (lambda x: f"{x:.1%}") if unit == "%" else (lambda x: f"{x:.2f}x")
        wanted = "none" if goal is None else f"≥ {shown(goal)}"
        spread = f", rounds {shown(min(rounds))} to {shown(max(rounds))}" if len(rounds) > 1 else ""
        checks.append(
            {
                "name": wording,
                "value": value,
                "by_cpu": by_cpu,
                "rounds": rounds,
                "goal": wanted,
                "shown": f"{shown(value)} (by CPU per request {shown(by_cpu)}{spread})",
                "met": None if goal is None else value >= goal,
            }
        )

    peers = [(name, load[name]["50"]) for name in PEERS if name in load]
    if peers:
        name, best = max(peers, key=lambda peer: peer[1]["rps"])
        ratio(name, f"edge ≥ 1.2x the best Python peer ({name}) at 50 connections", 1.2)
        checks.append(
            {
                "name": f"edge p99 lower than {name}'s at 50 connections",
                "value": edge["p99_ms"],
                "goal": f"< {best['p99_ms']:.2f} ms",
                "shown": f"{edge['p99_ms']:.2f} ms vs {best['p99_ms']:.2f} ms",
                "met": edge["p99_ms"] < best["p99_ms"],
            }
        )
    if FORWARD_ONLY in load:
        wording = f"mode look-up and policy cost ≤ {ROUTING_TARGET:.0%} (edge / forward-only)"
        ratio(FORWARD_ONLY, wording, 1 - ROUTING_TARGET)
    if BARE in load:
        ratio(BARE, "routing, access log and metrics together (edge / bare forwarder)", None)
    if "nginx" in load:
        ratio("nginx", "edge ≥ 12% of nginx's throughput at 50 connections", 0.12, "%")
    return checks


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = (line.split(":", 1)[1] for line in cpuinfo if line.startswith("model name"))
            model = next(names, "").strip()
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _version([nginx_binary(), "-v"]),
        "wrk": _version(["wrk", "-v"]),
    }


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "?"
    return (done.stdout + done.stderr).strip().splitlines()[0] if done.stdout + done.stderr else "?"
