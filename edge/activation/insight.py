"""The transition insight's two reports, as the admin API, the CLI and the dashboard show them:
who still links to the legacy portal (edge.activation.referrers), and does the new portal
answer alike (edge.activation.parity)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from edge.activation.parity import parity_lines, parity_report
from edge.activation.referrers import legacy_days, referrer_lines, referrers_report
from edge.core.tenants import Mode
from edge.modes import ModeStore


async def _parity_json(store: ModeStore, tenant: str) -> dict[str, Any]:
    return (await parity_report(store, tenant)).to_json()


@dataclass(frozen=True)
class Report:
    help: str  # what `edge tenant NAME` says it does
    of: Callable[[ModeStore, str], Awaitable[dict[str, Any]]]  # the report's JSON
    lines: Callable[[dict[str, Any]], list[str]]  # for a terminal
    fine: Callable[[dict[str, Any]], bool]  # False: the command exits 1


REPORTS = {
    "referrers": Report(
        "the outside pages that still send customers to the tenant's legacy portal",
        referrers_report,
        referrer_lines,
        lambda report: True,
    ),
    "parity": Report(
        "how the new portal answered the legacy reads the shadow mirrored "
        "(exits 1 while a path blocks activation)",
        _parity_json,
        parity_lines,
        lambda report: not any(d["blocks_activation"] for d in report["disagreeing"]),
    ),
}


async def dashboard_insight(
    store: ModeStore, tenant: str, mode: Mode | None, today: date
) -> dict[str, Any]:
    """The tenant page's insight: referrers, legacy hits a day once active, parity in setup."""
    return {
        "referrers": (await referrers_report(store, tenant))["referrers"],
        "legacy_days": await legacy_days(store, tenant, today) if mode is Mode.ACTIVE else [],
        "parity": await parity_report(store, tenant) if mode is Mode.SETUP else None,
    }
