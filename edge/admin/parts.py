"""What the admin API and the dashboard both work on, built once by the composition root."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.modes import ModeStore
from edge.modes.counts import ModeCounter
from edge.moves.service import Moves

if TYPE_CHECKING:
    from edge.activation.readiness import ReadinessCheck
    from edge.activation.watch import WatchMonitor


@dataclass(frozen=True, slots=True)
class AdminParts:
    """The store and the move service; readiness and the watch where this edge has them; one
    count of tenants per mode, shared, so that a change through either side drops it."""

    store: ModeStore
    moves: Moves
    counter: ModeCounter
    readiness: ReadinessCheck | None = None
    watch: WatchMonitor | None = None

    @classmethod
    def of(
        cls,
        store: ModeStore,
        moves: Moves,
        readiness: ReadinessCheck | None = None,
        watch: WatchMonitor | None = None,
    ) -> AdminParts:
        return cls(store, moves, ModeCounter(store), readiness, watch)
