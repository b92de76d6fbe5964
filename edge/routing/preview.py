"""Private preview: signed, expiring links and cookies that open one setup tenant's preview.

A token is ``{tenant}.{expires}.{signature}`` (expires in Unix seconds; an HMAC-SHA256 by
itsdangerous, with a key derived from ``[admin].preview_secret``, else the admin token). Staff
open ``{new public_url}{home}?edge-preview=<token>``: the router checks it, sets the cookie
``edge-preview-{tenant}`` and redirects to the same page without the parameter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from itsdangerous import BadSignature, Signer

from edge.config import Settings
from edge.routing.decide import Policy

LINK_PARAM = "edge-preview"
COOKIE_PREFIX = "edge-preview-"
_LINK_PARAM = LINK_PARAM.encode() + b"="
_SALT = b"edge.routing.preview.v1"


@dataclass(frozen=True, slots=True)
class Grant:
    """A valid preview link: the clean URL to go on to and the cookie that opens the preview."""

    location: str
    set_cookie: bytes


@dataclass(frozen=True, slots=True)
class PreviewLink:
    url: str
    expires: datetime


class PreviewGate:
    """Signs preview links and tells preview holders from everyone else."""

    def __init__(self, settings: Settings, policy: Policy) -> None:
        secret = settings.admin.preview_secret or settings.admin.token
        if not secret:
            raise ValueError("admin.preview_secret: a secret is needed to sign preview links")
        self.ttl = settings.policy.preview_ttl
        self._signer = Signer(
            secret, salt=_SALT, key_derivation="hmac", digest_method=hashlib.sha256
        )
        self._policy = policy
        self._path_scoped = settings.new.tenant == "path"
        secure = urlsplit(settings.new.public_url).scheme == "https"
        self._attributes = "; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")

    def token(self, tenant: str, expires: datetime) -> str:
        return self._signer.sign(f"{tenant}.{int(expires.timestamp())}").decode()

    def link(self, tenant: str, now: datetime, ttl: float | None = None) -> PreviewLink:
        """The link staff open to see ``tenant``'s preview, valid for ``ttl`` seconds."""
        expires = now + timedelta(seconds=self.ttl if ttl is None else ttl)
        query = f"{LINK_PARAM}={self.token(tenant, expires)}"
        return PreviewLink(self._policy.new_page(tenant, self._home(tenant), query), expires)

    def expiry(self, token: str, tenant: str, now: datetime) -> int | None:
        """The token's expiry (Unix seconds) when it is genuine, unexpired and for ``tenant``."""
        try:
            value = self._signer.unsign(token).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            return None
        signed_tenant, _, expires = value.rpartition(".")
        if signed_tenant != tenant or not expires.isdigit():
            return None
        return int(expires) if int(expires) > now.timestamp() else None

    def holds(self, tenant: str, headers: Iterable[tuple[bytes, bytes]], now: datetime) -> bool:
        """Does the request carry a valid preview cookie for ``tenant``?"""
        name = (COOKIE_PREFIX + tenant).encode()
        for header, value in headers:
            if header != b"cookie":
                continue
            for pair in value.split(b";"):
                key, has_value, token = pair.strip().partition(b"=")
                if has_value and key == name:
                    return self.expiry(token.decode("latin-1"), tenant, now) is not None
        return False

    def grant(self, tenant: str, path: str, query: bytes, now: datetime) -> Grant | None:
        """For a request that opens a valid preview link: the cookie and the clean URL."""
        if _LINK_PARAM not in query:
            return None
        token = ""
        rest: list[bytes] = []
        for part in query.split(b"&"):
            if part.startswith(_LINK_PARAM):
                token = part[len(_LINK_PARAM) :].decode("latin-1")
            elif part:
                rest.append(part)
        expires = self.expiry(token, tenant, now)
        if expires is None:
            return None
        # With the path rule the tenant is the first path segment: scope the cookie to it.
        cookie_path = f"/{tenant}" if self._path_scoped else "/"
        set_cookie = (
            f"{COOKIE_PREFIX}{tenant}={token}; Max-Age={expires - int(now.timestamp())}; "
            f"Path={cookie_path}{self._attributes}"
        )
        location = self._policy.new_page(tenant, path, b"&".join(rest).decode("latin-1"))
        return Grant(location, set_cookie.encode())

    def _home(self, tenant: str) -> str:
        return self._policy.new_home.replace("{tenant}", tenant)
