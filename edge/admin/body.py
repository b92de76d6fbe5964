"""An admin request's body, bounded: in size, in nesting, and read one way only.

Nothing in a body is trusted, though the listener is on loopback by default. Over BODY_MAX
bytes it is refused with 413 (before a byte of it is read when its Content-Length says so), so
that no client makes edge buffer gigabytes; JSON nested deeper than DEPTH_MAX is refused (400)
where Python's decoder would raise RecursionError; a field given twice is refused (400), for
which one counts would depend on the parser, and a proxy in front may read the other.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException

from edge.core.asgi import ASGIApp, Message, Receive, Scope, Send
from edge.core.refusals import quoted

BODY_MAX = 1024 * 1024
DEPTH_MAX = 32
TOO_LARGE = f"the body is larger than the admin listener accepts ({BODY_MAX} bytes)"


class BodyLimit:
    """ASGI middleware: the app reading a body over ``limit`` bytes gets an HTTPException(413)
    from ``receive`` (its exception handlers answer it), and the connection is closed after the
    answer rather than the rest of the body read."""

    def __init__(self, app: ASGIApp, limit: int = BODY_MAX) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # llhttp has refused a Content-Length that is not digits; this many digits is too many.
        declared = next((v for n, v in scope["headers"] if n == b"content-length"), b"")
        over = len(declared) > 18 or int(declared or b"0") > self.limit
        received = 0

        async def limited() -> Message:
            nonlocal received
            if not over:
                message = await receive()
                received += len(message.get("body", b""))
                if received <= self.limit:
                    return message
            raise HTTPException(413, TOO_LARGE, headers={"Connection": "close"})

        await self.app(scope, limited, send)


class BodyRefused(ValueError):
    """JSON that is refused though it parses (or would, with stack enough): the message says why."""


def parse_json(raw: bytes) -> Any:
    """The JSON ``raw`` holds; BodyRefused for one nested too deep or with a field twice,
    ValueError for anything that is no JSON (NaN and Infinity, which JSON lacks, included)."""
    try:
        value = json.loads(raw, object_pairs_hook=_once_each, parse_constant=_no_constant)
    except RecursionError:
        raise BodyRefused(f"the body nests deeper than {DEPTH_MAX} levels") from None
    if _depth(value) > DEPTH_MAX:
        raise BodyRefused(f"the body nests deeper than {DEPTH_MAX} levels")
    return value


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in pairs:
        if name in fields:
            raise BodyRefused(f"the body gives the field {quoted(name)} more than once")
        fields[name] = value
    return fields


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (a scalar: 0), a level at a time: no recursion."""
    depth, level = 0, [value]
    while containers := [node for node in level if isinstance(node, dict | list)]:
        depth += 1
        level = [
            c for node in containers for c in (node.values() if isinstance(node, dict) else node)
        ]
    return depth
