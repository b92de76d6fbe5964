"""What the shadow found (edge.activation.shadow), and how it weighs on an activation.

The counts are every process's, added up in the store: a tenant's reads are mirrored by
whichever instance served them, and the report, the CLI and the activation guard may run in
any other (or in `edge tenant set`, with no shadow of its own).

An activation is refused while the new portal answers 404, 5xx or nothing for a path whose
legacy read answered 2xx: customers who can read that page today would lose it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge.modes import ModeStore
from edge.modes.traffic import Disagreement, ParityCounts, p95_ms

BLOCKING_SHOWN = 3  # paths a refusal names


def blocks(disagreement: Disagreement) -> bool:
    """Legacy read 2xx, the new portal 404, 5xx or no answer."""
    new = disagreement.new_status
    return 200 <= disagreement.legacy_status < 300 and (new in (0, 404) or new >= 500)


@dataclass(frozen=True)
class ParityReport:
    tenant: str
    counts: ParityCounts

    @property
    def disagreeing(self) -> list[tuple[Disagreement, int]]:
        """Most mirrored first."""
        return sorted(self.counts.disagreeing.items(), key=lambda item: (-item[1], item[0]))

    @property
    def blocking(self) -> list[tuple[Disagreement, int]]:
        return [(d, n) for d, n in self.disagreeing if blocks(d)]

    def refusal(self) -> str:
        """Why parity refuses an activation; "" when it does not."""
        blocking = self.blocking
        if not blocking:
            return ""
        shown = ", ".join(
            f"{d.path} → {d.new_path} (legacy {d.legacy_status}, "
            f"new {d.new_status or 'no answer'}, {n} mirrored)"
            for d, n in blocking[:BLOCKING_SHOWN]
        )
        more = len(blocking) - BLOCKING_SHOWN
        return (
            f"shadow parity: {len(blocking)} path(s) the legacy portal answers 2xx get 404, 5xx "
            f"or no answer on the new portal: {shown}" + (f" and {more} more" if more > 0 else "")
        )

    def note(self) -> str:
        """For the audit note of an activation parity allowed; "" when nothing was mirrored."""
        counts = self.counts
        if not counts.mirrored:
            return ""
        return f"shadow parity: {counts.agreeing} of {counts.mirrored} mirrored reads agree"

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "mirrored": self.counts.mirrored,
            "agreeing": self.counts.agreeing,
            "disagreeing": [
                {
                    "path": d.path,
                    "new_path": d.new_path,
                    "legacy_status": d.legacy_status,
                    "new_status": d.new_status,
                    "hits": n,
                    "blocks_activation": blocks(d),
                }
                for d, n in self.disagreeing
            ],
            "legacy_ms_p95": p95_ms(self.counts.latency.get("legacy", {})),
            "new_ms_p95": p95_ms(self.counts.latency.get("new", {})),
        }


async def parity_report(store: ModeStore, tenant: str) -> ParityReport:
    return ParityReport(tenant, await store.parity(tenant))


def parity_lines(report: dict[str, Any]) -> list[str]:
    """The CLI's table of a parity report (its JSON, from the store or the admin API)."""
    lines = [
        f"{report['tenant']}: {report['agreeing']} of {report['mirrored']} mirrored reads agree; "
        f"p95 legacy {_ms(report['legacy_ms_p95'])}, new {_ms(report['new_ms_p95'])}"
    ]
    if report["disagreeing"]:
        lines.append(f"  {'hits':>8}  {'legacy':>6}  {'new':>6}  path → new path")
    for d in report["disagreeing"]:
        flag = "  (blocks activation)" if d["blocks_activation"] else ""
        lines.append(
            f"  {d['hits']:>8}  {d['legacy_status']:>6}  {d['new_status'] or '-':>6}  "
            f"{d['path']} → {d['new_path']}{flag}"
        )
    return lines


def _ms(value: int | None) -> str:
    return "-" if value is None else f"≤{value} ms"
