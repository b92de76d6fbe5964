"""The mode cache's entries: bounded, evicted least recently used first, at no cost on a hit.

Two kinds of entry: a tenant with a key ("present": a mode, or None for a stored value that
is not a mode) and a tenant without one ("absent", served as legacy). Each kind is bounded on
its own, so a flood of made-up tenant ids, all absent, never pushes out a real tenant; an
absent entry also expires after its TTL, as lua-resty-mlcache's negative cache.

Eviction is by generations (as in the hashlru package): ``young`` holds every entry used or
read since its kind last aged, and a hit there is the one dict look-up of the request path,
with nothing to reorder. An entry found in its kind's old generation moves back to young.
When young holds a generation's worth of a kind, that kind ages: its old generation, the
entries not used since it last aged, is dropped, and its young entries become the old ones.
So every entry dropped was used less recently than every entry kept, and a kind keeps at
least a generation (half its bound) of its most recently used. Aging costs a pass over the
young absent entries, a generation of the small kind, never one over the large one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Final, Literal

from edge.policy import Mode


class _Missing(enum.Enum):
    MISSING = "missing"


MISSING: Final = _Missing.MISSING
Missing = Literal[_Missing.MISSING]

_ABSENT: Final = Mode.LEGACY  # what a tenant without a key is served as


class Entries:
    def __init__(self, present_size: int, absent_size: int) -> None:
        self.young: dict[str, Mode | None] = {}  # both kinds: the request path's look-up
        self._young_absent: set[str] = set()
        self._old_present: dict[str, Mode | None] = {}
        self._old_absent: set[str] = set()
        self._expiry: dict[str, float] = {}  # every absent entry → when it expires, soonest first
        self._present_generation = max(1, present_size // 2)
        self._absent_generation = max(1, absent_size // 2)

    def __len__(self) -> int:
        return len(self.young) + len(self._old_present) + len(self._old_absent)

    @property
    def absent(self) -> int:
        return len(self._expiry)

    @property
    def present(self) -> int:
        return len(self) - self.absent

    def get(self, tenant: str) -> Mode | Missing | None:
        """The entry, made young if it was old; MISSING when there is none."""
        mode = self.young.get(tenant, MISSING)
        return self.recall(tenant) if mode is MISSING else mode

    def recall(self, tenant: str) -> Mode | Missing | None:
        """An entry of an old generation, made young again; MISSING when there is none."""
        mode = self._old_present.pop(tenant, MISSING)
        if mode is not MISSING:
            self._young_present(tenant, mode)
            return mode
        if tenant in self._old_absent:
            self._old_absent.remove(tenant)
            self._young_absentee(tenant)
            return _ABSENT
        return MISSING

    def peek(self, tenant: str) -> Mode | Missing | None:
        """The entry without making it young; MISSING when there is none."""
        mode = self.young.get(tenant, MISSING)
        if mode is MISSING:
            mode = self._old_present.get(tenant, MISSING)
        if mode is MISSING and tenant in self._old_absent:
            return _ABSENT
        return mode

    def is_absent(self, tenant: str) -> bool:
        return tenant in self._expiry

    def put(self, tenant: str, mode: Mode | None) -> None:
        """A tenant with a key, just read."""
        self.discard(tenant)
        self._young_present(tenant, mode)

    def put_absent(self, tenant: str, expires: float) -> None:
        """A tenant without a key, just read; ``expires`` on the clock given to ``expire``."""
        self.discard(tenant)
        self._expiry[tenant] = expires
        self._young_absentee(tenant)

    def discard(self, tenant: str) -> None:
        if self.young.pop(tenant, MISSING) is not MISSING:
            self._young_absent.discard(tenant)
        elif self._old_present.pop(tenant, MISSING) is MISSING:
            self._old_absent.discard(tenant)
        self._expiry.pop(tenant, None)

    def expire(self, now: float) -> list[str]:
        """Drop the absent entries whose time has come; returns their tenants."""
        expired = []
        for tenant, expires in self._expiry.items():
            if expires > now:
                break
            expired.append(tenant)
        for tenant in expired:
            self.discard(tenant)
        return expired

    def present_tenants(self) -> list[str]:
        return [t for t in self.young if t not in self._young_absent] + list(self._old_present)

    def modes(self) -> Iterator[Mode | None]:
        """Every entry's mode (LEGACY for an absent one)."""
        yield from self.young.values()
        yield from self._old_present.values()
        for _ in self._old_absent:
            yield _ABSENT

    def take(self) -> tuple[dict[str, Mode | None], list[str]]:
        """Empty the entries: returns the present ones and the absent tenants."""
        present = {t: m for t, m in self.young.items() if t not in self._young_absent}
        present.update(self._old_present)
        absent = list(self._expiry)
        self.young, self._young_absent = {}, set()
        self._old_present, self._old_absent, self._expiry = {}, set(), {}
        return present, absent

    def _young_present(self, tenant: str, mode: Mode | None) -> None:
        if len(self.young) - len(self._young_absent) >= self._present_generation:
            # The old present generation is dropped; the young one becomes it, in one step
            # (the young dict itself), once the few young absent entries are moved out of it.
            young = self.young
            self.young = {absentee: young.pop(absentee) for absentee in self._young_absent}
            self._old_present = young
        self.young[tenant] = mode

    def _young_absentee(self, tenant: str) -> None:
        if len(self._young_absent) >= self._absent_generation:
            for dropped in self._old_absent:
                del self._expiry[dropped]
            for aged in self._young_absent:
                del self.young[aged]
            self._old_absent, self._young_absent = self._young_absent, set()
        self._young_absent.add(tenant)
        self.young[tenant] = _ABSENT
