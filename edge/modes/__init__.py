"""The mode store (Redis or embedded) and the per-process mode cache in front of it."""

from edge.modes.base import (
    Change,
    ModeEvent,
    ModeStore,
    StoreUnavailable,
    TenantPage,
)
from edge.modes.cache import MISSING, CacheStats, ModeCache
from edge.modes.factory import open_store
from edge.modes.memory import MemoryStore
from edge.modes.redis import RedisStore

__all__ = [
    "MISSING",
    "CacheStats",
    "Change",
    "MemoryStore",
    "ModeCache",
    "ModeEvent",
    "ModeStore",
    "RedisStore",
    "StoreUnavailable",
    "TenantPage",
    "open_store",
]
