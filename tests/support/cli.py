"""The `edge` command as ops run it, in a process of its own, and the config file it reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.process import to_toml
from tests.support.settings import merged

EXAMPLE_LEGACY_HOST = "parents.example.com"
EXAMPLE_NEW_HOST = "portal.example.com"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m edge ARGS``; its exit status, stdout and stderr for the caller to check."""
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def cli_config(
    url: str,
    prefix: str | None = None,
    *,
    legacy: str = "http://127.0.0.1:9001",
    new: str = "http://127.0.0.1:9002",
    hosts: tuple[str, str] = (EXAMPLE_LEGACY_HOST, EXAMPLE_NEW_HOST),
    **sections: dict[str, Any],
) -> str:
    """A config file's text for the CLI: the store at ``url`` (and ``prefix``), the fronts
    ``hosts`` on the backends ``legacy`` and ``new``; ``sections`` are laid over it."""
    legacy_host, new_host = hosts
    store: dict[str, Any] = {"url": url} if prefix is None else {"url": url, "prefix": prefix}
    raw = {
        "store": store,
        "legacy": {
            "hosts": [legacy_host],
            "backend": legacy,
            "public_url": f"https://{legacy_host}",
        },
        "new": {"hosts": [new_host], "backend": new, "public_url": f"https://{new_host}"},
    }
    return to_toml(merged(raw, sections))


def write_cli_config(path: Path, url: str, prefix: str | None = None, **options: Any) -> Path:
    """``cli_config`` written to ``path``, for ``--config``."""
    path.write_text(cli_config(url, prefix, **options))
    return path
