"""What one public request came to, as the router fills it in for metrics and the access log."""

from __future__ import annotations

from dataclasses import dataclass

from edge.core.tenants import Front

FORWARD = "forward"
REDIRECT = "redirect"
REFUSE = "refuse"
CLIENT_CLOSED = 499  # nginx's status for "the client went away before the answer"
STALLED = "request body stalled past body_idle_timeout"  # the error of such an Outcome
# Why a forwarded request did not end normally: edge answered 502 or 504 itself.
_FAILURES = {502: "upstream_unreachable", 504: "upstream_timeout"}


@dataclass(slots=True)
class Outcome:
    """What one forwarded request came to: the status sent (499 if the client left first), body
    bytes sent to the client, seconds from sending upstream to the last byte relayed."""

    status: int
    bytes_out: int
    upstream_seconds: float
    error: str | None


@dataclass(slots=True)
class Served:
    request_id: str
    method: str
    path: str  # never the query string: it may carry tokens
    client: str
    front: Front | None = None  # None: the Host named no front
    tenant: str | None = None
    mode: str | None = None  # a Mode's value, "invalid", or None when not looked up
    decision: str = REFUSE
    reason: str | None = None  # why it was refused
    status: int = 0
    bytes: int = 0  # body bytes sent to the client
    upstream_seconds: float | None = None  # forwarded only: sending upstream to the last byte
    error: str | None = None
    duration: float = 0.0  # seconds from the request's arrival to its end

    def forwarded(self, outcome: Outcome, *, aborted: bool = False) -> None:
        """Take in what forwarding came to; ``aborted``: the backend failed mid-response."""
        self.decision = FORWARD
        self.status = outcome.status
        self.bytes = outcome.bytes_out
        self.upstream_seconds = outcome.upstream_seconds
        self.error = outcome.error
        if aborted:
            self.reason = "upstream_aborted"
        elif outcome.error == STALLED:
            self.reason = "body_timeout"
        elif outcome.error is not None:
            self.reason = _FAILURES.get(outcome.status, "client_closed")
