"""TOML file + environment → validated, immutable settings.

Every problem names where it is: ``edge.toml: policy.legacy_sunset: ...`` for a key of the
file, ``EDGE_SERVER__PORT: ...`` for an environment variable. A bad config lists every
problem at once, one a line.

Environment variables override file values: ``EDGE_<SECTION>__<KEY>`` (for example
``EDGE_STORE__URL``), plus ``EDGE_ADMIN_TOKEN``. A value is read as the key it sets: a string
key takes the value as it is, a number or a switch is converted (``8080``, ``true``), a list
is a JSON array or comma-separated (``a.example.com,b.example.com``), a list of tables is
JSON, and an empty value unsets an optional key.
"""

from __future__ import annotations

from edge.config.env import ENV_ADMIN_TOKEN, ENV_CONFIG, ENV_PREFIX, EnvOverrides
from edge.config.loading import (
    DEMO_CONFIG,
    NO_CONFIG,
    ConfigError,
    config_path,
    from_mapping,
    load,
)
from edge.config.schema import (
    AdminSettings,
    AllowRule,
    FrontSettings,
    PathRule,
    PolicySettings,
    PortalTLSError,
    ServerSettings,
    Settings,
    StoreSettings,
    TenantRule,
    UpstreamSettings,
    WebSocketSettings,
    duration_seconds,
)
from edge.config.store_urls import STORE_SCHEMES, RedisNodes, redacted_url, redis_nodes

__all__ = [
    "DEMO_CONFIG",
    "ENV_ADMIN_TOKEN",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "NO_CONFIG",
    "STORE_SCHEMES",
    "AdminSettings",
    "AllowRule",
    "ConfigError",
    "EnvOverrides",
    "FrontSettings",
    "PathRule",
    "PolicySettings",
    "PortalTLSError",
    "RedisNodes",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "TenantRule",
    "UpstreamSettings",
    "WebSocketSettings",
    "config_path",
    "duration_seconds",
    "from_mapping",
    "load",
    "redacted_url",
    "redis_nodes",
]
