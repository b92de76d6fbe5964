"""The run's summary as a table on stdout, as JSON, and as a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.results import EDGE, Results

RESULTS_JSON = "results.json"
RESULTS_PNG = "results.png"


def write(results: Results, out: Path, *, chart: bool) -> dict[str, Any]:
    summary = results.summary()
    print(table(summary))
    (out / RESULTS_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    written = [out / RESULTS_JSON]
    if chart:
        draw(summary, out / RESULTS_PNG)
        written.append(out / RESULTS_PNG)
    print("\nwritten: " + ", ".join(str(path) for path in written))
    return summary


def table(summary: dict[str, Any]) -> str:
    settings = summary["settings"]
    machine = summary["machine"]
    lines = [
        "",
        f"{summary['date']}  {machine['cpus']} CPUs ({machine['cpu'] or 'unknown CPU'}), "
        f"{settings['rounds']} interleaved round(s) of {settings['seconds_per_run']:g} s per run, "
        "medians",
        "",
    ]
    connections = settings["connections"]
    head = f"{'':<20}" + "".join(
        f"| {f'{c} connection' + ('s' if c > 1 else ''):^45} " for c in connections
    )
    sub = f"{'target':<20}" + "".join(
        f"| {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'vs edge':>8} {'CPU µs':>7}   "
        for _ in connections
    )
    if summary["load"]:
        lines += [head, sub, "-" * len(sub)]
    for target, by_connections in summary["load"].items():
        row = f"{target:<20}"
        for c in connections:
            entry = by_connections.get(str(c))
            if entry is None:
                row += f"| {'':45} "
                continue
            ratio = f"{entry['vs_edge']:.2f}x" if entry["vs_edge"] is not None else "—"
            mark = " " if entry["clean"] else "!"
            row += (
                f"| {entry['rps']:>9,.0f} {entry['p50_ms']:>7.2f} {entry['p99_ms']:>7.2f} "
                f"{ratio:>8} {entry['cpu_us']:>7.1f} {mark} "
            )
        lines.append(row)
    if summary["load"]:
        lines.append("CPU µs: CPU time of the serving process per request (the cost; less noisy)")
    if any(not e["clean"] for by_c in summary["load"].values() for e in by_c.values()):
        lines.append("! some requests failed or got a status other than 2xx/3xx")

    tenants = summary["tenants"]
    if "warm" in tenants:
        lines += [
            "",
            f"many tenants: {tenants['stored']:,} in Redis, requests spread over "
            f"{tenants['spread_over']:,}, 50 connections",
        ]
        for phase in ("cold", "warm"):
            if phase in tenants:
                entry = tenants[phase]
                lines.append(
                    f"  {phase:<5} {entry['rps']:>9,.0f} req/s  p99 {entry['p99_ms']:.2f} ms  "
                    f"cache hit rate {entry['hit_rate']:.2%} "
                    f"({entry['hits']:,} hits, {entry['misses']:,} misses)"
                )
        ratio = tenants["warm"].get("vs_edge_one_tenant")
        if ratio is not None:
            lines.append(f"  warm throughput is {ratio:.0%} of edge's with one tenant")

    if summary["streaming"]:
        lines += [
            "",
            f"{'streaming 100 MiB':<20}| {'download MiB/s':>14} {'peak RSS':>9} "
            f"| {'upload MiB/s':>12} {'peak RSS':>9} | {'idle RSS':>8}",
        ]
        for target, entry in summary["streaming"].items():
            down, up = entry.get("download", {}), entry.get("upload", {})
            lines.append(
                f"{target:<20}| {down.get('mib_s', 0):>14,.0f} "
                f"{down.get('peak_rss_mib', 0):>6.0f} MiB"
                f" | {up.get('mib_s', 0):>12,.0f} {up.get('peak_rss_mib', 0):>6.0f} MiB"
                f" | {entry['idle_rss_mib']:>4.0f} MiB"
            )

    if summary["targets"]:
        lines += ["", "targets (ratios within this run):"]
        for check in summary["targets"]:
            verdict = {True: "met", False: "NOT MET", None: "info"}[check["met"]]
            lines.append(f"  {verdict:<8} {check['name']}: {check['shown']} (goal {check['goal']})")
    return "\n".join(lines)


def draw(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    load = summary["load"]
    names = list(load)
    figure, axes = plt.subplots(3, 2, figsize=(14, 13))
    figure.suptitle(
        f"edge side by side, {summary['date']}: {summary['machine']['cpus']} CPUs, loopback, "
        f"wrk, medians of {summary['settings']['rounds']} interleaved rounds",
        fontsize=13,
    )

    def metric(connections: str, key: str) -> list[float]:
        return [load[name].get(connections, {}).get(key, 0) for name in names]

    more = "(more is better)"
    panels = (
        (axes[0][0], metric("50", "rps"), "{:,.0f}", f"requests/s at 50 connections {more}"),
        (axes[0][1], metric("1", "rps"), "{:,.0f}", f"requests/s at 1 connection {more}"),
        (axes[1][0], metric("50", "p99_ms"), "{:.1f} ms", "p99 latency at 50 connections, ms"),
        (
            axes[1][1],
            metric("50", "cpu_us"),
            "{:.0f} µs",
            "CPU µs per request at 50 connections (the cost; less is better)",
        ),
    )
    for axis, values, label, title in panels:
        _bars(axis, names, values, label)
        axis.set_title(title)
    _streaming(axes[2][0], summary["streaming"])
    _tenants(axes[2][1], summary["tenants"])
    for axis in axes.flat:
        axis.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _bars(axis: Any, names: list[str], values: list[float], label: str) -> None:
    """One bar per target; one far beyond the rest is cut at the edge, so the rest stay legible."""
    colours = ["#c44e52" if name == EDGE else "#8c8c8c" for name in names]
    ordered = [*sorted(values, reverse=True), 0.0, 0.0]
    limit = ordered[0] * 1.2 if ordered[0] <= 3 * ordered[1] else ordered[1] * 1.6
    bars = axis.barh(names, [min(value, limit) for value in values], color=colours)
    axis.invert_yaxis()
    for bar, value in zip(bars, values, strict=True):
        cut = value > limit
        text = f"{label.format(value)} (off scale) " if cut else f" {label.format(value)}"
        axis.annotate(
            text,
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            ha="right" if cut else "left",
            color="white" if cut else "black",
            fontsize=9,
        )
    axis.set_xlim(0, limit or 1)
    axis.grid(axis="x", alpha=0.3)


def _streaming(axis: Any, streaming: dict[str, Any]) -> None:
    if not streaming:
        axis.set_visible(False)
        return
    proxies = list(streaming)
    rows = range(len(proxies))
    height = 0.38
    sides = ((-height / 2, "download", "#4c72b0"), (height / 2, "upload", "#dd8452"))
    for offset, direction, colour in sides:
        values = [streaming[p].get(direction, {}).get("mib_s", 0) for p in proxies]
        peaks = [streaming[p].get(direction, {}).get("peak_rss_mib", 0) for p in proxies]
        places = [row + offset for row in rows]
        bars = axis.barh(places, values, height, label=direction, color=colour)
        for bar, value, peak in zip(bars, values, peaks, strict=True):
            axis.annotate(
                f" {value:,.0f} MiB/s, peak RSS {peak:.0f} MiB",
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                va="center",
                fontsize=8,
            )
    axis.set_yticks(list(rows), proxies)
    axis.invert_yaxis()
    axis.legend(loc="lower right", fontsize=8)
    axis.set_xlim(0, axis.get_xlim()[1] * 1.7)
    axis.grid(axis="x", alpha=0.3)
    axis.set_title("100 MiB through each proxy, MiB/s, and its peak RSS")


def _tenants(axis: Any, tenants: dict[str, Any]) -> None:
    phases = [phase for phase in ("cold", "warm") if phase in tenants]
    if not phases:
        axis.set_visible(False)
        return
    values = [tenants[phase]["rps"] for phase in phases]
    bars = axis.barh(phases, values, color=["#8c8c8c", "#c44e52"][: len(phases)])
    axis.invert_yaxis()
    for bar, phase in zip(bars, phases, strict=True):
        entry = tenants[phase]
        axis.annotate(
            f" {entry['rps']:,.0f} req/s, cache hit rate {entry['hit_rate']:.1%}",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            va="center",
            fontsize=9,
        )
    axis.set_xlim(0, max(values) * 1.8)
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(f"edge, {tenants['stored']:,} tenants, requests over {tenants['spread_over']:,}")
