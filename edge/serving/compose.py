"""The one composition root: what `serve`, `demo` and the CLI build from the settings.

The policy is built once; the store, the readiness check and the move service each get the
slice of the settings they use. ``EdgeApp`` adds the serving parts around these.
"""

from __future__ import annotations

from edge.activation.readiness import ReadinessCheck
from edge.config import Settings
from edge.forwarding.headers import Backend
from edge.modes import ModeStore, open_store
from edge.moves.service import Clock, Moves, utc_now
from edge.routing.decide import Policy


class Parts:
    """The policy, the store and moving tenants, wired once for one process."""

    def __init__(
        self, settings: Settings, store: ModeStore | None = None, clock: Clock = utc_now
    ) -> None:
        self.policy = Policy.from_settings(settings)
        self.store = store or open_store(settings.store)
        self.readiness = ReadinessCheck(
            self.store,
            self.policy,
            Backend.from_settings(settings.new),
            settings.policy,
            settings.upstream,
            clock,
        )
        # Safe activation: every unforced move to active is checked for readiness first.
        self.moves = Moves(self.store, guard=self.readiness.guard, clock=clock)
