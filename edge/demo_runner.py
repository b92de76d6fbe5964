"""`edge demo`: the router, both demo portals and the embedded store in one process."""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

from edge.config import Settings
from edge.demo import legacy_portal, new_portal
from edge.modes import MemoryStore, ModeStore, open_store
from edge.server import Listener, serve

# One tenant in each mode, so every cell of the routing matrix can be clicked.
SEED = {"swim-school": "setup", "dance-studio": "active"}


def run_demo(settings: Settings) -> int:
    store: ModeStore = open_store(settings.store)
    if isinstance(store, MemoryStore):
        for tenant, mode in SEED.items():
            store.set_raw(tenant, mode)
    portals = {
        _listener(settings.legacy.backend): legacy_portal(),
        _listener(settings.new.backend): new_portal(),
    }
    print(_instructions(settings), file=sys.stderr, flush=True)
    try:
        serve(settings, store=store, side_listeners=portals)
    except OSError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 1
    return 0


def _listener(backend: str) -> Listener:
    parts = urlsplit(backend)
    return Listener(parts.hostname or "127.0.0.1", parts.port or 80)


def _instructions(settings: Settings) -> str:
    legacy, new, admin = settings.legacy.public_url, settings.new.public_url, settings.admin
    token = admin.token or "<set [admin].token>"
    return f"""
edge demo: the router, two demo portals and the embedded store.

  acme-gym      legacy   Parent Portal   {legacy}/acme-gym/
                         Customer Portal {new}/acme-gym/      (not enabled: sent back)
  swim-school   setup    Parent Portal   {legacy}/swim-school/
                         Customer Portal {new}/swim-school/   (read-only preview)
  dance-studio  active   Parent Portal   {legacy}/dance-studio/classes  (redirects)
                         Customer Portal {new}/dance-studio/

Move a tenant (forward only; --force to roll back):
  edge tenant set acme-gym setup
  curl -X PUT -H 'Authorization: Bearer {token}' -d '{{"mode": "setup"}}' \\
       http://{admin.host}:{admin.port}/api/tenants/acme-gym
  or in the dashboard, http://{admin.host}:{admin.port}/ (log in with the token {token})

Admin API: http://{admin.host}:{admin.port}/api/tenants     Stop: Ctrl-C
"""
