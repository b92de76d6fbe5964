"""What every part of edge speaks of: a tenant's id, its mode, the front a request came in on."""

from __future__ import annotations

import re
from enum import StrEnum

from edge.core.memo import Memo

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class Mode(StrEnum):
    LEGACY = "legacy"
    SETUP = "setup"
    ACTIVE = "active"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def parse(cls, value: str | bytes | None) -> Mode | None:
        """A stored value → its Mode; a missing key is LEGACY, anything else invalid is None."""
        if value is None:
            return cls.LEGACY
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        return _BY_VALUE.get(value)


_RANK = {Mode.LEGACY: 0, Mode.SETUP: 1, Mode.ACTIVE: 2}
_BY_VALUE = {mode.value: mode for mode in Mode}


def is_forward_move(current: Mode | None, target: Mode) -> bool:
    """Moves go legacy → setup → active; staying put is allowed, going back needs force."""
    return current is None or target.rank >= current.rank


class Front(StrEnum):
    LEGACY = "legacy"
    NEW = "new"


# The ids of the moment: a look-up costs a fifth of a match.
VALID_TENANT_IDS: Memo[str, bool] = Memo(lambda value: TENANT_ID.fullmatch(value) is not None, 4096)


def is_tenant_id(value: str) -> bool:
    return VALID_TENANT_IDS[value]
