"""The traffic counts the store keeps for safe activation, whichever store it is.

Per tenant: the legacy paths customers request (deep links, with counts) while the tenant is
legacy or setup, and the new portal's responses by status class in two phases: ``setup``
(the preview, the baseline) and ``active`` (the watch after activation, restarted at each
activation). Every process adds what it counted since its last flush.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STATUS_CLASSES = ("2xx", "3xx", "404", "4xx", "5xx")  # "4xx": client errors other than 404
# Counts nobody has added to for this long are dropped (a tenant that left, a finished watch).
RETENTION_SECONDS = 90 * 86400
# Deep links are kept up to twice the number reported, so that a path on its way up is not
# dropped the moment it first appears.
KEEP_SLACK = 2


def status_class(status: int) -> str | None:
    """The class a response is counted in; None for one not to count: the client left (499)
    or stalled (edge's 408; a portal's own 408 goes uncounted with it)."""
    if status == 404:
        return "404"
    if status in (408, 499) or not 200 <= status < 600:
        return None
    return f"{status // 100}xx"


@dataclass
class TrafficCounts:
    """One process's counts since its last flush."""

    deep_links: dict[str, dict[str, int]] = field(default_factory=dict)  # tenant → path → n
    responses: dict[str, dict[str, dict[str, int]]] = field(
        default_factory=dict
    )  # tenant → phase → status class → n

    def __bool__(self) -> bool:
        return bool(self.deep_links or self.responses)

    def tenants(self) -> list[str]:
        return sorted(self.deep_links.keys() | self.responses.keys())

    def only(self, tenants: set[str]) -> TrafficCounts:
        """These counts for ``tenants`` alone."""
        return TrafficCounts(
            {tenant: paths for tenant, paths in self.deep_links.items() if tenant in tenants},
            {tenant: phases for tenant, phases in self.responses.items() if tenant in tenants},
        )

    def requests(self) -> int:
        """How many requests these counts stand for."""
        links = sum(n for paths in self.deep_links.values() for n in paths.values())
        answers = sum(
            n for phases in self.responses.values() for c in phases.values() for n in c.values()
        )
        return links + answers
