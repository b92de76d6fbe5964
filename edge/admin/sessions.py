"""Dashboard sessions: a signed cookie that says who logged in with the admin token.

The signing key derives from the admin token, so changing the token logs everyone out. Each
session carries its own CSRF token, which every state-changing form must send back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "edge_dashboard"
MAX_AGE = 12 * 3600


@dataclass(frozen=True)
class Session:
    who: str
    csrf: str

    def accepts(self, presented: str) -> bool:
        """True when a form's CSRF token is this session's (compared in constant time)."""
        return hmac.compare_digest(presented.encode(), self.csrf.encode())


class Sessions:
    def __init__(self, token: str, max_age: int = MAX_AGE) -> None:
        key = hmac.new(token.encode(), b"edge dashboard session", hashlib.sha256).hexdigest()
        self._serializer = URLSafeTimedSerializer(key, salt="edge.dashboard.session")
        self._token = token.encode()
        self.max_age = max_age

    def is_token(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._token)

    def read(self, request: Request) -> Session | None:
        """The request's session, or None when it has none or the cookie is not ours."""
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        who, csrf = data.get("who"), data.get("csrf")
        if not isinstance(who, str) or not isinstance(csrf, str):
            return None
        return Session(who, csrf)

    def start(self, response: Response, who: str, *, secure: bool) -> Session:
        session = Session(who, secrets.token_urlsafe(32))
        response.set_cookie(
            COOKIE,
            self._serializer.dumps({"who": session.who, "csrf": session.csrf}),
            max_age=self.max_age,
            httponly=True,
            samesite="strict",
            secure=secure,
        )
        return session

    @staticmethod
    def end(response: Response) -> None:
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
