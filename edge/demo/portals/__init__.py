"""The two built-in demo portals that `edge demo` puts behind the router.

`legacy_portal()` is the old Parent Portal, `new_portal()` the new Customer Portal: two small,
self-contained Starlette apps with in-memory state, made so a person can click through a
tenant's transition and see at a glance which portal answered, for which tenant and in which
`X-Edge-Mode`. Tenants are the first path segment (`/acme-gym/...`).

They stand in for separate applications, so they share nothing with the router but the
`X-Edge-*` headers. Each browser is a visitor of its own (a cookie): its basket, bookings and
enrolments are its own, and no visitor sees another's.
"""

from __future__ import annotations

from edge.demo.portals.legacy import legacy_portal
from edge.demo.portals.new import new_portal

__all__ = ["legacy_portal", "new_portal"]
