"""`edge tenant ...`: see and move tenants, through the store or a running edge's admin API."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from edge.activation.insight import REPORTS
from edge.activation.watch import watch_report
from edge.cli.commands import EXIT_REFUSED
from edge.config import Settings
from edge.core.refusals import FORCE_FLAG, ChangeRefused
from edge.core.tenants import Mode, is_tenant_id
from edge.modes import Change, StoreUnavailable
from edge.modes.base import Schedule
from edge.moves.importer import BulkMover
from edge.serving.compose import Parts

if TYPE_CHECKING:
    from edge.admin.client import AdminClient


class TenantReads(Protocol):
    """What the tenant commands read: a ModeStore, or the admin API of a running edge."""

    async def get(self, tenant: str) -> str | None: ...
    async def modes(self) -> dict[str, str]: ...
    async def history(self, tenant: str, limit: int = 100) -> list[Change]: ...
    async def schedules(self) -> list[Schedule]: ...
    async def close(self) -> None: ...


class TenantMoves(BulkMover, Protocol):
    """How the tenant commands move tenants: the move service, or the admin API."""

    async def set_mode(
        self, tenant: str, mode: Mode, *, actor: str, force: bool = False, via: str = "cli"
    ) -> Change: ...
    async def schedule_move(
        self, tenant: str, mode: Mode, at: datetime, *, actor: str, force: bool = False
    ) -> Schedule: ...
    async def cancel_schedule(self, schedule_id: str) -> Schedule: ...


@dataclass(frozen=True)
class TenantOps:
    reads: TenantReads
    moves: TenantMoves
    local: Parts | None  # None: through the admin API


def tenant_ops(settings: Settings) -> TenantOps:
    """The store and the move service, or, for the embedded store, the admin API of the edge
    that holds it."""
    if settings.store.embedded:
        from edge.admin.client import AdminClient

        admin = settings.admin
        client = AdminClient(f"http://{admin.host}:{admin.port}", admin.token)
        return TenantOps(client, client, None)
    parts = Parts(settings)
    return TenantOps(parts.store, parts.moves, parts)


def run_tenant_command(settings: Settings, action: TenantAction) -> int:
    async def run() -> int:
        ops = tenant_ops(settings)
        try:
            return await action(ops)
        finally:
            await ops.reads.close()

    try:
        return asyncio.run(run())
    except ChangeRefused as exc:
        print(f"edge: refused: {exc.says(FORCE_FLAG)}", file=sys.stderr)
    except StoreUnavailable as exc:
        print(f"edge: the mode store cannot be reached: {exc}", file=sys.stderr)
    return EXIT_REFUSED


class TenantAction(Protocol):
    async def __call__(self, ops: TenantOps) -> int: ...


def _mode_label(raw: str | None) -> str:
    mode = Mode.parse(raw)
    return mode.value if mode else f"invalid (stored {raw!r})"


def cmd_tenant_get(args: argparse.Namespace, settings: Settings) -> int:
    if (problem := _bad_tenant(args.tenant)) is not None:
        return problem

    async def action(ops: TenantOps) -> int:
        print(f"{args.tenant} {_mode_label(await ops.reads.get(args.tenant))}")
        return 0

    return run_tenant_command(settings, action)


def cmd_tenant_set(args: argparse.Namespace, settings: Settings) -> int:
    if (mode := _move_target(args)) is None:
        return EXIT_REFUSED

    async def action(ops: TenantOps) -> int:
        change = await ops.moves.set_mode(args.tenant, mode, actor=args.actor, force=args.force)
        if change.changed:
            forced = " (forced)" if change.forced else ""
            print(
                f"{args.tenant}: {_mode_label(change.previous)} → {mode}{forced}, by {change.actor}"
            )
        else:
            print(f"{args.tenant}: already {mode}, nothing changed")
        if change.note:
            print(f"  {change.note}")  # what the readiness check found
        return 0

    return run_tenant_command(settings, action)


def cmd_tenant_list(args: argparse.Namespace, settings: Settings) -> int:
    async def action(ops: TenantOps) -> int:
        modes = await ops.reads.modes()
        shown = sorted(t for t, raw in modes.items() if args.mode is None or raw == args.mode)
        width = max((len(t) for t in shown), default=6)
        for tenant in shown:
            print(f"{tenant:<{width}}  {_mode_label(modes[tenant])}")
        if not shown:
            print("no tenants have a mode set: every tenant is legacy", file=sys.stderr)
        return 0

    return run_tenant_command(settings, action)


def cmd_tenant_history(args: argparse.Namespace, settings: Settings) -> int:
    if (problem := _bad_tenant(args.tenant)) is not None:
        return problem

    async def action(ops: TenantOps) -> int:
        changes = await ops.reads.history(args.tenant)
        for change in changes:
            forced = ", forced" if change.forced else ""
            print(
                f"{change.at.isoformat()}  {_mode_label(change.previous)} → {change.mode}  "
                f"by {_shown(change.actor)} ({_shown(change.via)}{forced})"
            )
        if not changes:
            print(f"{args.tenant} has no recorded changes", file=sys.stderr)
        return 0

    return run_tenant_command(settings, action)


def cmd_tenant_schedule(args: argparse.Namespace, settings: Settings) -> int:
    from edge.moves.schedule import parse_instant

    if (mode := _move_target(args)) is None:
        return EXIT_REFUSED
    try:
        at = parse_instant(args.at)
    except ValueError as exc:
        print(f"edge: refused: --at: {exc}", file=sys.stderr)
        return EXIT_REFUSED

    async def action(ops: TenantOps) -> int:
        schedule = await ops.moves.schedule_move(
            args.tenant, mode, at, actor=args.actor, force=args.force
        )
        print(f"scheduled {_describe_schedule(schedule)}")
        return 0

    return run_tenant_command(settings, action)


def cmd_tenant_schedules(args: argparse.Namespace, settings: Settings) -> int:
    async def action(ops: TenantOps) -> int:
        shown = [s for s in await ops.reads.schedules() if args.tenant in (None, s.tenant)]
        for schedule in shown:
            print(_describe_schedule(schedule))
        if not shown:
            print("no moves are scheduled", file=sys.stderr)
        return 0

    return run_tenant_command(settings, action)


def cmd_tenant_unschedule(args: argparse.Namespace, settings: Settings) -> int:
    if args.tenant is not None and (problem := _bad_tenant(args.tenant)) is not None:
        return problem

    async def action(ops: TenantOps) -> int:
        if args.id is not None:
            ids = [args.id]
        else:
            ids = [s.id for s in await ops.reads.schedules() if s.tenant == args.tenant]
            if not ids:
                print(f"edge: refused: {args.tenant} has no scheduled moves", file=sys.stderr)
                return EXIT_REFUSED
        for schedule_id in ids:
            print(f"cancelled {_describe_schedule(await ops.moves.cancel_schedule(schedule_id))}")
        return 0

    return run_tenant_command(settings, action)


def _describe_schedule(schedule: Schedule) -> str:
    forced = ", forced" if schedule.force else ""
    return (
        f"{schedule.id}  {schedule.at.isoformat()}  {schedule.tenant} → {schedule.mode}  "
        f"by {_shown(schedule.actor)}{forced}"
    )


def _shown(name: str) -> str:
    """A name as recorded, escaped where it holds what a terminal would act on: entries
    written before actors had to be printable, or by hand in Redis."""
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def cmd_tenant_import(args: argparse.Namespace, settings: Settings) -> int:
    from edge.moves import importer

    try:
        rows, bad = importer.read_rows(args.file)
    except (OSError, ValueError) as exc:
        print(f"edge: refused: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_REFUSED

    async def action(ops: TenantOps) -> int:
        done = await importer.import_rows(
            ops.moves,
            str(args.file),
            rows,
            bad,
            actor=args.actor,
            force=args.force,
            dry_run=args.dry_run,
            progress=sys.stderr.isatty(),
            out=sys.stdout,
            err=sys.stderr,
        )
        return 0 if done else EXIT_REFUSED

    return run_tenant_command(settings, action)


def _move_target(args: argparse.Namespace) -> Mode | None:
    """The mode ``args.tenant`` is to move to; None, said why, when the tenant or mode is bad."""
    if _bad_tenant(args.tenant) is not None:
        return None
    mode = Mode.parse(args.mode)
    if mode is None:
        print(
            f"edge: refused: {args.mode!r} is not a mode: use legacy, setup or active",
            file=sys.stderr,
        )
    return mode


def cmd_tenant_preview_link(args: argparse.Namespace, settings: Settings) -> int:
    if (problem := _bad_tenant(args.tenant)) is not None:
        return problem
    if not settings.policy.private_preview:
        print(
            "edge: refused: [policy].private_preview is off: "
            "a setup tenant's preview is public, no link is needed",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    gate = Parts(settings).preview
    assert gate is not None  # previews are private
    link = gate.link(args.tenant, datetime.now(UTC), args.ttl)
    print(link.url)
    print(
        f"valid until {link.expires.isoformat()}, for {args.tenant} while it is in setup",
        file=sys.stderr,
    )
    return 0


def cmd_tenant_readiness(args: argparse.Namespace, settings: Settings) -> int:
    if (problem := _bad_tenant(args.tenant)) is not None:
        return problem

    async def action(ops: TenantOps) -> int:
        if ops.local is not None:
            report = (await ops.local.readiness.report(args.tenant)).to_json()
        else:
            report = await cast("AdminClient", ops.reads).readiness(args.tenant)
        verdict = "ready" if report["ready"] else "NOT ready"
        print(f"{report['headline']}: {verdict} (activation needs {report['threshold']:.0%})")
        for check in report["worst"]:
            outcome = check["status"] or f"no answer ({check['error']})"
            where = f"{check['path']} → {check['target']}"
            print(f"  {check['requests']:>8} requests  {outcome}  {where}")
        return 0 if report["ready"] else EXIT_REFUSED

    return run_tenant_command(settings, action)


def cmd_tenant_watch(args: argparse.Namespace, settings: Settings) -> int:
    if (problem := _bad_tenant(args.tenant)) is not None:
        return problem

    async def action(ops: TenantOps) -> int:
        watch: dict[str, Any]
        if ops.local is not None:
            watch = (await watch_report(ops.local.store, args.tenant, settings)).to_json()
        else:
            watch = await cast("AdminClient", ops.reads).watch(args.tenant)
        print("\n".join(watch["summary"]))
        return EXIT_REFUSED if watch["alerts"] else 0

    return run_tenant_command(settings, action)


def cmd_tenant_insight(args: argparse.Namespace, settings: Settings) -> int:
    if (problem := _bad_tenant(args.tenant)) is not None:
        return problem
    report = REPORTS[args.report]

    async def action(ops: TenantOps) -> int:
        if ops.local is not None:
            found = await report.of(ops.local.store, args.tenant)
        else:
            found = await cast("AdminClient", ops.reads).insight(args.report, args.tenant)
        print("\n".join(report.lines(found)))
        return 0 if report.fine(found) else EXIT_REFUSED

    return run_tenant_command(settings, action)


def _bad_tenant(tenant: str) -> int | None:
    if is_tenant_id(tenant):
        return None
    print(
        f"edge: refused: {tenant!r} is not a tenant id "
        "(lower-case letters, digits and '-', at most 63, not starting with '-')",
        file=sys.stderr,
    )
    return EXIT_REFUSED
