"""The dashboard's plain words: what customers see in a mode, what a move changes, the sunset.

Pure: everything comes from the policy, the tenant and the time given.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from edge.core.tenants import Mode, is_forward_move
from edge.routing.decide import Policy


def what_customers_see(tenant: str, mode: Mode | None, policy: Policy, now: datetime) -> list[str]:
    """One sentence per portal: what the tenant's customers get in ``mode`` (None: invalid)."""
    if mode is None:
        return [
            f"Every request for {tenant} fails with an error: its stored value is not a mode. "
            "Moving it to any mode repairs it."
        ]
    legacy_home = policy.legacy_home_location(tenant)
    new_home = policy.new_home_location(tenant)
    if mode is Mode.ACTIVE:
        permanence = (
            ", permanently (301): browsers may remember it" if policy.redirect_status == 301 else ""
        )
        return [
            f"Every Parent Portal link redirects to the Customer Portal at {new_home}{permanence}.",
            "Enrolments, checkout and everything else work on the Customer Portal.",
        ]
    if _retired(policy, now):
        legacy = "The Parent Portal is retired (the legacy sunset has passed): it answers 410 Gone."
    elif mode is Mode.LEGACY:
        legacy = f"Parents use the Parent Portal at {legacy_home}, as always."
    else:
        legacy = f"Parents keep using the Parent Portal at {legacy_home}."
    if mode is Mode.LEGACY:
        new = (
            "The Customer Portal is not enabled: its pages send visitors back to the "
            "Parent Portal, and nothing can be booked or changed there."
        )
    else:
        allowed = ", ".join(
            f"{r.method} {r.path.replace('{tenant}', tenant)}" for r in policy.setup_allow
        )
        preview = (
            "a private read-only preview, only for holders of a preview link (everyone else "
            "is sent back to the Parent Portal),"
            if policy.private_preview
            else "a read-only preview"
        )
        new = (
            f"The Customer Portal opens as {preview} at {new_home}: pages show, "
            "but enrolments, checkout and every other change are refused"
            + (f" (except {allowed})." if allowed else ".")
        )
    return [legacy, new]


@dataclass(frozen=True)
class Move:
    rollback: bool
    warnings: list[str]


def describe_move(
    tenant: str, current: Mode | None, target: Mode, policy: Policy, now: datetime
) -> Move:
    """Whether moving ``tenant`` from ``current`` to ``target`` is a rollback, and its risks."""
    warnings = []
    if current is Mode.ACTIVE and target is not Mode.ACTIVE:
        warnings.append("Parent Portal links stop redirecting to the Customer Portal.")
        if target is Mode.SETUP:
            warnings.append("Enrolments and checkout on the Customer Portal stop working.")
        if policy.redirect_status == 301:
            warnings.append(
                "Browsers that remember the permanent redirect (301) keep going to the "
                "Customer Portal until their cache expires."
            )
    if target is not Mode.ACTIVE and _retired(policy, now):
        warnings.append(
            f"The legacy sunset has passed, so the Parent Portal answers 410 Gone: in {target} "
            f"nobody can book or pay for {tenant}. Only active keeps it working."
        )
    return Move(
        rollback=current is not None and not is_forward_move(current, target), warnings=warnings
    )


def how_long(delta: timedelta) -> str:
    """A duration in its two largest units: "149 days, 7 hours", "5 minutes"."""
    minutes = int(abs(delta).total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    units = [(days, "day"), (hours, "hour"), (minutes, "minute")]
    while units and not units[0][0]:
        units.pop(0)
    parts = [f"{value} {unit}{'' if value == 1 else 's'}" for value, unit in units[:2] if value]
    return ", ".join(parts) or "less than a minute"


def sunset_distance(sunset: datetime, now: datetime) -> str:
    """ "in 3 days, 2 hours" before the sunset, "passed 5 minutes ago" from it on."""
    if now < sunset:
        return f"in {how_long(sunset - now)}"
    return f"passed {how_long(now - sunset)} ago"


def _retired(policy: Policy, now: datetime) -> bool:
    return policy.sunset is not None and now >= policy.sunset
