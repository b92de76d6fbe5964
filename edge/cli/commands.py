"""`edge serve`, `edge demo` and `edge check-config`."""

from __future__ import annotations

import argparse
import os
import sys

from edge import config
from edge.config import Settings

EXIT_REFUSED = 1
EXIT_CONFIG = 2


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
