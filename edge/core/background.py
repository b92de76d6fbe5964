"""Tasks that run beside the server for as long as it serves: started once, surely stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("edge")

_STOP_RETRY = 0.5  # seconds before a cancellation that did not take is sent again

Job = Callable[[], Coroutine[Any, Any, None]]


class Background:
    """The tasks of one component (the mode cache's listener, the traffic flush, ...)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self, *jobs: Job) -> None:
        """Run each job in a task of its own; a no-op while they run."""
        if self._tasks:
            return
        for job in jobs:
            task = asyncio.create_task(job(), name=f"{self.name}: {job.__name__}")
            task.add_done_callback(_log_crash)
            self._tasks.append(task)

    async def stop(self) -> None:
        """Cancel the tasks and return once every one has ended.

        A cancellation can be lost inside the Redis client (a read timeout firing in the same
        instant swallows it, and the task goes on to its next read or its next round), so it
        is sent again until the tasks have really ended: a shutdown never hangs on one.
        """
        tasks, self._tasks = self._tasks, []
        while tasks:
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=_STOP_RETRY)
            tasks = list(pending)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s stopped", task.get_name(), exc_info=exc)
