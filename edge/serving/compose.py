"""The one composition root: what `serve`, `demo` and the CLI build from the settings.

Each part is built once, on first use, from the slice of the settings it uses: the policy,
the preview gate, the store, the readiness check and the move service. ``EdgeApp`` adds the
serving parts around these; a CLI command builds only what it uses.
"""

from __future__ import annotations

from functools import cached_property

from edge.activation.readiness import ReadinessCheck
from edge.config import Settings
from edge.forwarding.headers import Backend
from edge.modes import ModeStore, open_store
from edge.moves.service import Clock, Moves, utc_now
from edge.routing.decide import Policy
from edge.routing.preview import PreviewGate


class Parts:
    """The parts of one process that more than one way in uses, each wired once."""

    def __init__(
        self, settings: Settings, store: ModeStore | None = None, clock: Clock = utc_now
    ) -> None:
        self.settings = settings
        self._store = store
        self.clock = clock

    @cached_property
    def policy(self) -> Policy:
        return Policy.from_settings(self.settings)

    @cached_property
    def preview(self) -> PreviewGate | None:
        """Signs preview links, when previews are private."""
        if not self.settings.policy.private_preview:
            return None
        return PreviewGate(self.settings, self.policy)

    @cached_property
    def store(self) -> ModeStore:
        return self._store or open_store(self.settings.store)

    @cached_property
    def readiness(self) -> ReadinessCheck:
        return ReadinessCheck(
            self.store,
            self.policy,
            Backend.from_settings(self.settings.new),
            self.settings.policy,
            self.settings.upstream,
            self.clock,
        )

    @cached_property
    def moves(self) -> Moves:
        # Safe activation: every unforced move to active is checked for readiness first.
        return Moves(self.store, guard=self.readiness.guard, clock=self.clock)
