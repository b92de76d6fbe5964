"""`edge demo`: the router, both demo portals and the embedded store in one process."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from edge.config import Settings
from edge.demo.portals import legacy_portal, new_portal
from edge.modes import MemoryStore, ModeStore, open_store
from edge.serving.server import Listener, serve

# One tenant in each mode, so every cell of the routing matrix can be clicked.
SEED = {"swim-school": "setup", "dance-studio": "active"}
# Any instant in the past retires the Parent Portal: the demo's way to show the 410.
RETIRED_EXAMPLE = "EDGE_POLICY__LEGACY_SUNSET=2020-01-01T00:00:00Z"


def run_demo(settings: Settings, source: Path) -> int:
    store: ModeStore = open_store(settings.store)
    if isinstance(store, MemoryStore):
        for tenant, mode in SEED.items():
            store.set_raw(tenant, mode)
    portals = {
        _listener(settings.legacy.backend): legacy_portal(),
        _listener(settings.new.backend): new_portal(),
    }
    print(instructions(settings, source, edge_command()), file=sys.stderr, flush=True)
    try:
        serve(settings, store=store, side_listeners=portals, source=source)
    except OSError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 1
    return 0


def _listener(backend: str) -> Listener:
    parts = urlsplit(backend)
    return Listener(parts.hostname or "127.0.0.1", parts.port or 80)


def edge_command() -> str:
    """The command that runs this edge, as a person can type it again from anywhere: `edge`
    when that is the one on PATH, else its full path (or the Python that runs `-m edge`)."""
    started = Path(sys.argv[0]).absolute()
    if started.name == "__main__.py":
        return f"{shlex.quote(sys.executable)} -m edge"
    on_path = shutil.which("edge")
    if on_path is not None and Path(on_path).absolute() == started:
        return "edge"
    return shlex.quote(str(started))


def instructions(settings: Settings, source: Path, edge: str) -> str:
    legacy, new, admin = settings.legacy.public_url, settings.new.public_url, settings.admin
    token = admin.token or "<set [admin].token>"
    config = shlex.quote(str(source.absolute()))
    sunset = settings.policy.legacy_sunset
    retired = (
        f"The Parent Portal retires at {sunset.isoformat()} ([policy].legacy_sunset); the\n"
        f"dashboard counts down to it. To see it retired (410 Gone) now, start the demo so:\n"
        f"  {RETIRED_EXAMPLE} {edge} demo --config {config}"
        if sunset is not None
        else "No legacy sunset is set ([policy].legacy_sunset): the Parent Portal never retires."
    )
    return f"""
edge demo: the router, two demo portals and the embedded store ({config}).

  acme-gym      legacy   Parent Portal   {legacy}/acme-gym/
                         Customer Portal {new}/acme-gym/      (not enabled: sent back)
  swim-school   setup    Parent Portal   {legacy}/swim-school/
                         Customer Portal {new}/swim-school/   (read-only preview)
  dance-studio  active   Parent Portal   {legacy}/dance-studio/classes  (redirects)
                         Customer Portal {new}/dance-studio/

Move a tenant (forward only; --force to roll back):
  {edge} tenant set acme-gym setup --config {config}
  curl -X PUT -H 'Authorization: Bearer {token}' -d '{{"mode": "setup"}}' \\
       http://{admin.host}:{admin.port}/api/tenants/acme-gym
  or in the dashboard, http://{admin.host}:{admin.port}/ (log in with the token {token})

{retired}

Admin API: http://{admin.host}:{admin.port}/api/tenants     Stop: Ctrl-C
"""
