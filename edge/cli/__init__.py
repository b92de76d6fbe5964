"""The `edge` command: serve, demo, check-config and the tenant operations."""

from __future__ import annotations

import argparse
import getpass
import importlib.metadata as metadata
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from edge import config
from edge.activation.insight import REPORTS
from edge.cli.commands import EXIT_CONFIG, cmd_check_config, cmd_demo, cmd_serve
from edge.cli.tenant import (
    cmd_tenant_get,
    cmd_tenant_history,
    cmd_tenant_import,
    cmd_tenant_insight,
    cmd_tenant_list,
    cmd_tenant_preview_link,
    cmd_tenant_readiness,
    cmd_tenant_schedule,
    cmd_tenant_schedules,
    cmd_tenant_set,
    cmd_tenant_unschedule,
    cmd_tenant_watch,
)
from edge.core.tenants import Mode


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
    _move_arguments(
        move,
        "allow a move backwards (a rollback), or an activation the readiness check refuses",
    )
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
    _move_arguments(schedule, "allow a move backwards")
    schedule.add_argument(
        "--at", required=True, help="when: an ISO-8601 instant with an offset (…T06:00+01:00)"
    )
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
    _force_and_actor(bulk, "allow moves backwards", "who is making the changes")
    bulk.set_defaults(run=cmd_tenant_import)
    return top


def _move_arguments(command: argparse.ArgumentParser, force_help: str) -> None:
    """TENANT MODE [--force] [--actor NAME], for a command that moves one tenant."""
    command.add_argument("tenant")
    command.add_argument("mode", help="legacy, setup or active")
    _force_and_actor(command, force_help, "who is making the change")


def _force_and_actor(command: argparse.ArgumentParser, force_help: str, actor_help: str) -> None:
    command.add_argument("--force", action="store_true", help=force_help)
    command.add_argument("--actor", default=default_actor(), help=actor_help)


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


def _duration(text: str) -> float:
    try:
        seconds = config.duration_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds
