"""Waiting for something observable to happen, never for a length of time.

``eventually`` polls from a test's thread; ``eventually_async`` from a coroutine, leaving the
event loop to run meanwhile. ``Signals`` are named events that a server's loop sets and the test
(or another request) waits for with ``wait_event``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

WAIT = 10.0  # a generous bound for anything that should happen "soon"


def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``check()`` is true, failing after a generous ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
        time.sleep(0.02)


async def eventually_async(check: Callable[[], bool], within: float = 5.0) -> None:
    """``eventually`` for a coroutine: the loop runs between the checks."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.01)


class Signals:
    """Named threading.Events shared between a server's loop and the test's thread."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())


async def wait_event(event: threading.Event, seconds: float = WAIT) -> bool:
    """Whether ``event`` is set within ``seconds``, without holding up the loop meanwhile."""
    deadline = time.monotonic() + seconds
    while not event.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110 (set by a thread)
        await asyncio.sleep(0.01)
    return event.is_set()
