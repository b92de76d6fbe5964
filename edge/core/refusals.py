"""Why a move of a tenant is not made: typed, so that each way in words it its own way.

A refusal that force would overcome names force as the caller knows it: the CLI's flag
(``--force``), the admin API's field (``"force": true``). ``says(force)`` is the message;
``str()`` names it neutrally, for logs. ``quoted`` is how every refusal quotes a value it was
given: cut short, so that a client cannot make edge echo back megabytes.
"""

from __future__ import annotations

from edge.core.tenants import Mode

FORCE_FLAG = "--force"
FORCE_FIELD = '"force": true'
QUOTED_MAX = 80


def quoted(value: object) -> str:
    """``repr(value)`` in at most QUOTED_MAX characters: a longer one is cut, with an ellipsis."""
    if isinstance(value, str | bytes):
        value = value[:QUOTED_MAX]  # the rest would be cut anyway: never repr it all
    text = repr(value)
    return text if len(text) <= QUOTED_MAX else text[: QUOTED_MAX - 1] + "…"


class ChangeRefused(Exception):
    """A mode change that is not allowed; the message says why."""

    def says(self, force: str) -> str:
        """The message, naming force as ``force`` where force would allow the change."""
        return str(self)


class NeedsForce(ChangeRefused):
    """A move backwards (a rollback) without force."""

    def __init__(self, tenant: str, state: str, target: Mode) -> None:
        self.tenant, self.state, self.target = tenant, state, target
        super().__init__(self.says("force"))

    def says(self, force: str) -> str:
        return f"{self.tenant} {self.state}; moving back to {self.target.value} needs {force}"


class UnknownSchedule(ChangeRefused):
    """No pending schedule has the given id."""


class Relayed(ChangeRefused):
    """A refusal received from the admin API, worded as the API words it."""

    def says(self, force: str) -> str:
        return str(self).replace(FORCE_FIELD, force)
