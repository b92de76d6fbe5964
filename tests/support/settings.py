"""Settings the tests build edge from.

- ``settings_for``: the loopback stack's (tests.support.stack): the fronts ``LEGACY_HOST`` and
  ``NEW_HOST`` on the given backends, a store, an admin token; any section may be added to.
- ``example_settings``: the documented example's fronts (parents.example.com,
  portal.example.com) on backends nothing needs to reach, for code that never forwards.
"""

from __future__ import annotations

from typing import Any

from edge import config

LEGACY_HOST = "parents.test"
NEW_HOST = "portal.test"
ADMIN_TOKEN = "test-admin-token-0123456789"


def merged(raw: dict[str, Any], sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``raw`` with each of ``sections`` laid over the section of that name, key by key."""
    raw = dict(raw)
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def settings_for(
    legacy_url: str, new_url: str, store_url: str, prefix: str, **sections: dict[str, Any]
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        # The access log's writer thread would print between pytest's captures; its own
        # tests (test_access_log.py) read it from a real `edge serve`.
        "server": {"host": "127.0.0.1", "port": 0, "access_log": False},
        "store": {
            "url": store_url,
            "prefix": prefix,
            "resync_interval": 0.2,
            "flush_interval": 0.2,
        },
        "legacy": {
            "hosts": [LEGACY_HOST],
            "backend": legacy_url,
            "public_url": f"https://{LEGACY_HOST}",
        },
        "new": {"hosts": [NEW_HOST], "backend": new_url, "public_url": f"https://{NEW_HOST}"},
        "policy": {
            "setup_allow": [{"method": "POST", "path": "/{tenant}/staff/login"}],
            "path_rules": [{"from": "/{tenant}/classes", "to": "/{tenant}/schedule"}],
        },
        "upstream": {"connect_timeout": 1.0, "read_timeout": 2.0},
        "admin": {"host": "127.0.0.1", "port": 0, "token": ADMIN_TOKEN},
    }
    return merged(raw, sections)


EXAMPLE: dict[str, Any] = {
    "legacy": {
        "hosts": ["parents.example.com"],
        "backend": "http://legacy.internal:8000",
        "public_url": "https://parents.example.com",
    },
    "new": {
        "hosts": ["portal.example.com"],
        "backend": "http://new.internal:8000",
        "public_url": "https://portal.example.com",
    },
}


def example_settings(**sections: dict[str, Any]) -> config.Settings:
    """The example fronts, with ``sections`` laid over them (``policy={...}``, ``new={...}``)."""
    return config.from_mapping(merged(EXAMPLE, sections))
