"""The `edge` command: serve, demo, check-config and the tenant operations."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib.metadata as metadata
import os
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from edge import config
from edge.activation.insight import REPORTS
from edge.activation.readiness import ReadinessCheck
from edge.activation.watch import watch_report
from edge.config import Settings
from edge.core.tenants import Mode
from edge.modes import Change, ChangeRefused, ModeStore, StoreUnavailable, open_store
from edge.modes.base import MoveResult, Schedule
from edge.routing.preview import PreviewGate

if TYPE_CHECKING:
    from edge.admin.client import AdminClient

EXIT_REFUSED = 1
EXIT_CONFIG = 2


class TenantOps(Protocol):
    """What the tenant commands need: a ModeStore, or the admin API of a running edge."""

    async def get(self, tenant: str) -> str | None: ...
    async def modes(self) -> dict[str, str]: ...
    async def history(self, tenant: str, limit: int = 100) -> list[Change]: ...
    async def set_mode(
        self, tenant: str, mode: Mode, *, actor: str, force: bool = False, via: str = "cli"
    ) -> Change: ...
    async def move_many(
        self,
        moves: Sequence[tuple[str, str]],
        *,
        actor: str,
        force: bool = False,
        via: str = "bulk",
        dry_run: bool = False,
    ) -> list[MoveResult]: ...
    async def schedule_move(
        self, tenant: str, mode: Mode, at: datetime, *, actor: str, force: bool = False
    ) -> Schedule: ...
    async def schedules(self) -> list[Schedule]: ...
    async def cancel_schedule(self, schedule_id: str) -> Schedule: ...
    async def close(self) -> None: ...


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    try:
        given: str | Path | None = given_config(args)
    except ValueError as exc:
        top.error(str(exc))
    if args.run is cmd_demo and not (given or os.environ.get(config.ENV_CONFIG)):
        given = config.DEMO_CONFIG
    try:
        args.config = config.config_path(given, os.environ)
        settings = config.load(args.config)
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(f"edge: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    command: int = args.run(args, settings)
    return command


def parser() -> argparse.ArgumentParser:
    config_help = (
        "the TOML config file (default: $EDGE_CONFIG; `edge demo` alone has a built-in one)"
    )
    top = argparse.ArgumentParser(
        prog="edge", description="The edge router for the portal migration."
    )
    top.add_argument("--config", metavar="PATH", help=config_help)
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # The same option after the command's name; SUPPRESS: when it is not given there, the
    # subcommand's parser leaves the one given before the name in place.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument(
        "--config", metavar="PATH", dest="config_after", default=argparse.SUPPRESS, help=config_help
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help: str, parent: argparse._SubParsersAction[argparse.ArgumentParser] = commands
    ) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=help, parents=[after])

    command("serve", "run the router").set_defaults(run=cmd_serve)
    command("demo", "run the router with two demo portals and the embedded store").set_defaults(
        run=cmd_demo
    )
    command("check-config", "validate a config file and say what it sets up").set_defaults(
        run=cmd_check_config
    )
    tenant = command("tenant", "see and move tenants").add_subparsers(
        dest="tenant_command", required=True, metavar="ACTION"
    )
    get = command("get", "show a tenant's mode", tenant)
    get.add_argument("tenant")
    get.set_defaults(run=cmd_tenant_get)
    move = command("set", "move a tenant to a mode (forward only unless --force)", tenant)
    move.add_argument("tenant")
    move.add_argument("mode", help="legacy, setup or active")
    move.add_argument(
        "--force",
        action="store_true",
        help="allow a move backwards (a rollback), or an activation the readiness check refuses",
    )
    move.add_argument("--actor", default=default_actor(), help="who is making the change")
    move.set_defaults(run=cmd_tenant_set)
    listing = command("list", "list the tenants that have a mode set", tenant)
    listing.add_argument("--mode", choices=[m.value for m in Mode], help="only this mode")
    listing.set_defaults(run=cmd_tenant_list)
    history = command("history", "show a tenant's audited changes, newest first", tenant)
    history.add_argument("tenant")
    history.set_defaults(run=cmd_tenant_history)
    preview = command("preview-link", "print a link to a setup tenant's private preview", tenant)
    preview.add_argument("tenant")
    preview.add_argument(
        "--ttl",
        type=_duration,
        help="how long the link works: seconds, or 90m, 12h, 7d (default [policy].preview_ttl)",
    )
    preview.set_defaults(run=cmd_tenant_preview_link)
    readiness = command(
        "readiness", "check that the tenant's deep links resolve on the new portal", tenant
    )
    readiness.add_argument("tenant")
    readiness.set_defaults(run=cmd_tenant_readiness)
    watch = command("watch", "the 5xx and 404 shares since activation, against the preview", tenant)
    watch.add_argument("tenant")
    watch.set_defaults(run=cmd_tenant_watch)
    for name, report in REPORTS.items():
        insight = command(name, report.help, tenant)
        insight.add_argument("tenant")
        insight.set_defaults(run=cmd_tenant_insight, report=name)
    schedule = command("schedule", "schedule a move for a later instant", tenant)
    schedule.add_argument("tenant")
    schedule.add_argument("mode", help="legacy, setup or active")
    schedule.add_argument(
        "--at", required=True, help="when: an ISO-8601 instant with an offset (…T06:00+01:00)"
    )
    schedule.add_argument("--force", action="store_true", help="allow a move backwards")
    schedule.add_argument("--actor", default=default_actor(), help="who is making the change")
    schedule.set_defaults(run=cmd_tenant_schedule)
    schedules = command("schedules", "list the scheduled moves, soonest first", tenant)
    schedules.add_argument("--tenant", help="only this tenant's")
    schedules.set_defaults(run=cmd_tenant_schedules)
    unschedule = command("unschedule", "cancel a tenant's scheduled moves, or one by --id", tenant)
    which = unschedule.add_mutually_exclusive_group(required=True)
    which.add_argument("tenant", nargs="?", help="cancel every scheduled move of this tenant")
    which.add_argument("--id", help="cancel the scheduled move with this id")
    unschedule.set_defaults(run=cmd_tenant_unschedule)
    bulk = command(
        "import", "move the tenants of a CSV file (tenant,mode), all checked first", tenant
    )
    bulk.add_argument("file", type=Path, help="CSV: tenant,mode a row; an optional header row")
    bulk.add_argument(
        "--dry-run", action="store_true", help="say what would change, change nothing"
    )
    bulk.add_argument("--force", action="store_true", help="allow moves backwards")
    bulk.add_argument("--actor", default=default_actor(), help="who is making the changes")
    bulk.set_defaults(run=cmd_tenant_import)
    return top


def given_config(args: argparse.Namespace) -> str | None:
    """The --config given before the command's name or after it (the same, if both)."""
    before: str | None = args.config
    after: str | None = getattr(args, "config_after", None)
    if before and after and Path(before) != Path(after):
        raise ValueError("--config is given twice, with two paths: give it once")
    return after or before


def _version() -> str:
    try:
        return metadata.version("edge")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from edge.serving.server import serve

    # Worker processes read their config from the environment.
    os.environ[config.ENV_CONFIG] = str(args.config.resolve())
    try:
        serve(settings, source=args.config)
    except OSError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from edge.demo.runner import run_demo

    return run_demo(settings, args.config)


def cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    sunset = settings.policy.legacy_sunset
    variables = sorted(config.EnvOverrides.read(os.environ).variables.values())
    print(f"{args.config}: ok")
    print(f"  legacy front {', '.join(settings.legacy.hosts)} → {settings.legacy.backend}")
    print(f"  new front    {', '.join(settings.new.hosts)} → {settings.new.backend}")
    store = config.redacted_url(settings.store.url)
    print(f"  store        {store} (prefix {settings.store.prefix!r})")
    print(f"  sunset       {sunset.isoformat() if sunset else 'none'}")
    shadow = settings.shadow
    if shadow.sample_rate:
        print(
            f"  shadow       {shadow.sample_rate * 100:g}% of setup tenants' legacy reads mirrored "
            f"(queue {shadow.queue}, {shadow.concurrency} at a time)"
        )
    print(
        f"  listening    {settings.server.host}:{settings.server.port}, "
        f"admin {settings.admin.host}:{settings.admin.port}"
    )
    if variables:
        print(f"  environment  {', '.join(variables)}")
    return 0


def tenant_ops(settings: Settings) -> TenantOps:
    """The store itself, or, for the embedded store, the admin API of the edge that holds it."""
    if settings.store.embedded:
        from edge.admin.client import AdminClient

        admin = settings.admin
        return AdminClient(f"http://{admin.host}:{admin.port}", admin.token)
    store = open_store(settings.store)
    store.activation_guard = ReadinessCheck(settings, store).guard
    return store


def run_tenant_command(settings: Settings, action: TenantAction) -> int:
    async def run() -> int:
        ops = tenant_ops(settings)
        try:
            return await action(ops)
        finally:
            await ops.close()

    try:
        return asyncio.run(run())
    except ChangeRefused as exc:
        print(f"edge: refused: {exc}", file=sys.stderr)
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
        print(f"{args.tenant} {_mode_label(await ops.get(args.tenant))}")
        return 0

    return run_tenant_command(settings, action)


def cmd_tenant_set(args: argparse.Namespace, settings: Settings) -> int:
    if (problem := _bad_tenant(args.tenant)) is not None:
        return problem
    if (mode := _mode_or_refuse(args.mode)) is None:
        return EXIT_REFUSED

    async def action(ops: TenantOps) -> int:
        change = await ops.set_mode(args.tenant, mode, actor=args.actor, force=args.force)
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
        modes = await ops.modes()
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
        changes = await ops.history(args.tenant)
        for change in changes:
            forced = ", forced" if change.forced else ""
            print(
                f"{change.at.isoformat()}  {_mode_label(change.previous)} → {change.mode}  "
                f"by {change.actor} ({change.via}{forced})"
            )
        if not changes:
            print(f"{args.tenant} has no recorded changes", file=sys.stderr)
        return 0

    return run_tenant_command(settings, action)


def cmd_tenant_schedule(args: argparse.Namespace, settings: Settings) -> int:
    from edge.moves.schedule import parse_instant

    if (problem := _bad_tenant(args.tenant)) is not None:
        return problem
    if (mode := _mode_or_refuse(args.mode)) is None:
        return EXIT_REFUSED
    try:
        at = parse_instant(args.at)
    except ValueError as exc:
        print(f"edge: refused: --at: {exc}", file=sys.stderr)
        return EXIT_REFUSED

    async def action(ops: TenantOps) -> int:
        schedule = await ops.schedule_move(
            args.tenant, mode, at, actor=args.actor, force=args.force
        )
        print(f"scheduled {_describe_schedule(schedule)}")
        return 0

    return run_tenant_command(settings, action)


def cmd_tenant_schedules(args: argparse.Namespace, settings: Settings) -> int:
    async def action(ops: TenantOps) -> int:
        shown = [s for s in await ops.schedules() if args.tenant in (None, s.tenant)]
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
            ids = [s.id for s in await ops.schedules() if s.tenant == args.tenant]
            if not ids:
                print(f"edge: refused: {args.tenant} has no scheduled moves", file=sys.stderr)
                return EXIT_REFUSED
        for schedule_id in ids:
            print(f"cancelled {_describe_schedule(await ops.cancel_schedule(schedule_id))}")
        return 0

    return run_tenant_command(settings, action)


def _describe_schedule(schedule: Schedule) -> str:
    forced = ", forced" if schedule.force else ""
    return (
        f"{schedule.id}  {schedule.at.isoformat()}  {schedule.tenant} → {schedule.mode}  "
        f"by {schedule.actor}{forced}"
    )


def cmd_tenant_import(args: argparse.Namespace, settings: Settings) -> int:
    from edge.moves import importer

    try:
        rows, bad = importer.read_rows(args.file)
    except (OSError, ValueError) as exc:
        print(f"edge: refused: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_REFUSED

    async def action(ops: TenantOps) -> int:
        done = await importer.import_rows(
            ops,
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


def _mode_or_refuse(text: str) -> Mode | None:
    mode = Mode.parse(text)
    if mode is None:
        print(
            f"edge: refused: {text!r} is not a mode: use legacy, setup or active", file=sys.stderr
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
    link = PreviewGate(settings).link(args.tenant, datetime.now(UTC), args.ttl)
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
        if isinstance(ops, ModeStore):
            report = (await ReadinessCheck(settings, ops).report(args.tenant)).to_json()
        else:
            report = await cast("AdminClient", ops).readiness(args.tenant)
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
        if isinstance(ops, ModeStore):
            watch = (await watch_report(ops, args.tenant, settings)).to_json()
        else:
            watch = await cast("AdminClient", ops).watch(args.tenant)
        print("\n".join(watch["summary"]))
        return EXIT_REFUSED if watch["alerts"] else 0

    return run_tenant_command(settings, action)


def cmd_tenant_insight(args: argparse.Namespace, settings: Settings) -> int:
    if (problem := _bad_tenant(args.tenant)) is not None:
        return problem
    report = REPORTS[args.report]

    async def action(ops: TenantOps) -> int:
        if isinstance(ops, ModeStore):
            found = await report.of(ops, args.tenant)
        else:
            found = await cast("AdminClient", ops).insight(args.report, args.tenant)
        print("\n".join(report.lines(found)))
        return 0 if report.fine(found) else EXIT_REFUSED

    return run_tenant_command(settings, action)


def _duration(text: str) -> float:
    try:
        seconds = config.duration_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def _bad_tenant(tenant: str) -> int | None:
    from edge.core.tenants import is_tenant_id

    if is_tenant_id(tenant):
        return None
    print(
        f"edge: refused: {tenant!r} is not a tenant id "
        "(lower-case letters, digits and '-', at most 63, not starting with '-')",
        file=sys.stderr,
    )
    return EXIT_REFUSED
