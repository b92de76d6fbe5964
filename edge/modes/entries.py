"""The mode cache's entries: bounded, evicted least recently used first, at no cost on a hit.

Two kinds of entry: a tenant with a key ("present": a mode, or None for a stored value that
is not a mode) and a tenant without one ("absent", served as legacy). Each kind is bounded on
its own, so a flood of made-up tenant ids, all absent, never pushes out a real tenant; an
absent entry also expires after its TTL, as lua-resty-mlcache's negative cache.

Least recently used, by generations: ``young`` holds every entry used or read since its kind
last aged, and a hit there is the one dict look-up of the request path, with nothing to
reorder. When young holds half its bound of a kind, that kind ages: those young entries become
its newest aged generation. An entry found in an aged generation moves back to young. Past the
bound, entries go from the oldest aged generation, in the order they first came into it. So
what goes was used less recently than anything in a newer generation, and a kind always
keeps the last half of its bound it used; the bound itself is filled exactly.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Iterator
from typing import Final, Literal

from edge.core.tenants import Mode


class _Missing(enum.Enum):
    MISSING = "missing"


MISSING: Final = _Missing.MISSING
Missing = Literal[_Missing.MISSING]

_ABSENT: Final = Mode.LEGACY  # what a tenant without a key is served as


class _Aged:
    """One kind's aged generations, oldest first, and the order the oldest one goes in."""

    def __init__(self) -> None:
        self.generations: deque[dict[str, Mode | None]] = deque()
        self.size = 0
        self._order: list[str] = []  # the oldest generation's tenants, as it came
        self._at = 0

    def add(self, generation: dict[str, Mode | None]) -> None:
        if generation:
            self.generations.append(generation)
            self.size += len(generation)

    def get(self, tenant: str) -> Mode | Missing | None:
        for generation in reversed(self.generations):
            mode = generation.get(tenant, MISSING)
            if mode is not MISSING:
                return mode
        return MISSING

    def pop(self, tenant: str) -> Mode | Missing | None:
        for generation in reversed(self.generations):
            mode = generation.pop(tenant, MISSING)
            if mode is not MISSING:
                self.size -= 1
                return mode
        return MISSING

    def evict(self) -> tuple[str, Mode | None]:
        """Drop the least recently used entry (there must be one): its tenant and mode."""
        while True:
            oldest = self.generations[0]
            if self._at == 0:
                self._order = list(oldest)
            while self._at < len(self._order):
                tenant = self._order[self._at]
                self._at += 1
                mode = oldest.pop(tenant, MISSING)
                if mode is not MISSING:  # else it went back to young
                    self.size -= 1
                    return tenant, mode
            self.generations.popleft()
            self._order, self._at = [], 0

    def tenants(self) -> Iterator[str]:
        for generation in self.generations:
            yield from generation


class Entries:
    def __init__(self, present_size: int, absent_size: int) -> None:
        # Both kinds: the request path's look-up. Always this same dict, never replaced.
        self.young: dict[str, Mode | None] = {}
        self._young_absent: set[str] = set()
        self._present, self._absent = _Aged(), _Aged()
        self._expiry: dict[str, float] = {}  # every absent entry → when it expires, soonest first
        self._present_size, self._absent_size = present_size, absent_size
        self._present_generation = max(1, present_size // 2)
        self._absent_generation = max(1, absent_size // 2)
        self.modes: Counter[Mode | None] = Counter()  # of the present entries, kept as they go

    def __len__(self) -> int:
        return len(self.young) + self._present.size + self._absent.size

    @property
    def absent(self) -> int:
        return len(self._expiry)

    @property
    def present(self) -> int:
        return len(self) - self.absent

    def get(self, tenant: str) -> Mode | Missing | None:
        """The entry, made young if it was aged; MISSING when there is none."""
        mode = self.young.get(tenant, MISSING)
        return self.recall(tenant) if mode is MISSING else mode

    def recall(self, tenant: str) -> Mode | Missing | None:
        """An aged entry, made young again; MISSING when there is none."""
        mode = self._present.pop(tenant) if self._present.size else MISSING
        if mode is not MISSING:
            self._young_present(tenant, mode)
            return mode
        if tenant in self._expiry and self._absent.pop(tenant) is not MISSING:
            self._young_absentee(tenant)
            return _ABSENT
        return MISSING

    def peek(self, tenant: str) -> Mode | Missing | None:
        """The entry without making it young; MISSING when there is none."""
        mode = self.young.get(tenant, MISSING)
        if mode is MISSING:
            mode = self._present.get(tenant)
        if mode is MISSING and tenant in self._expiry:
            return _ABSENT
        return mode

    def is_absent(self, tenant: str) -> bool:
        return tenant in self._expiry

    def put(self, tenant: str, mode: Mode | None) -> None:
        """A tenant with a key, just read."""
        self.discard(tenant)
        self.modes[mode] += 1
        self._young_present(tenant, mode)

    def put_absent(self, tenant: str, expires: float) -> None:
        """A tenant without a key, just read; ``expires`` on the clock given to ``expire``."""
        self.discard(tenant)
        self._expiry[tenant] = expires
        self._young_absentee(tenant)

    def discard(self, tenant: str) -> None:
        if tenant in self._expiry:
            if self.young.pop(tenant, MISSING) is MISSING:
                self._absent.pop(tenant)
            self._young_absent.discard(tenant)
            del self._expiry[tenant]
            return
        mode = self.young.pop(tenant, MISSING)
        if mode is MISSING:
            mode = self._present.pop(tenant)
        if mode is not MISSING:
            self.modes[mode] -= 1

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
        young = [tenant for tenant in self.young if tenant not in self._young_absent]
        return young + list(self._present.tenants())

    def take(self) -> tuple[dict[str, Mode | None], list[str]]:
        """Empty the entries: returns the present ones and the absent tenants."""
        present = {t: m for t, m in self.young.items() if t not in self._young_absent}
        for generation in self._present.generations:
            present.update(generation)
        absent = list(self._expiry)
        self.young.clear()
        self._young_absent, self._expiry = set(), {}
        self._present, self._absent = _Aged(), _Aged()
        self.modes = Counter()
        return present, absent

    def _young_present(self, tenant: str, mode: Mode | None) -> None:
        if len(self.young) - len(self._young_absent) >= self._present_generation:
            # A copy at C speed (some ms at half a million), then the few young absent
            # entries are put back: ``young`` stays the same dict, which the cache's
            # request path holds on to.
            generation = self.young.copy()
            self.young.clear()
            for absentee in self._young_absent:
                self.young[absentee] = generation.pop(absentee)
            self._present.add(generation)
        self.young[tenant] = mode
        if self.present > self._present_size:
            self.modes[self._present.evict()[1]] -= 1

    def _young_absentee(self, tenant: str) -> None:
        if len(self._young_absent) >= self._absent_generation:
            self._absent.add(
                {absentee: self.young.pop(absentee) for absentee in self._young_absent}
            )
            self._young_absent = set()
        self._young_absent.add(tenant)
        self.young[tenant] = _ABSENT
        if self.absent > self._absent_size:
            del self._expiry[self._absent.evict()[0]]
