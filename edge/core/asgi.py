"""The ASGI types edge uses, spelled once."""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# A scope key, true once edge's HTTP protocol has cut a request off because its body stalled
# past body_idle_timeout: it answered 408 if no answer had started, else closed the connection
# mid-answer. The app's receive() then says the client disconnected.
BODY_STALLED = "edge.body_stalled"
Headers = list[tuple[bytes, bytes]]  # raw names and values, as the server passes them
