"""Background tasks stop for sure, even when a cancellation is swallowed on the way."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge.core.background import Background


async def test_stop_ends_a_task_that_swallows_its_first_cancellation() -> None:
    rounds: list[str] = []

    async def stubborn() -> None:
        # What a Redis read does when its timeout fires as the cancellation arrives.
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            rounds.append("swallowed")
        await asyncio.Event().wait()

    background = Background("test")
    background.start(stubborn)
    await asyncio.sleep(0)
    await asyncio.wait_for(background.stop(), 10)
    assert rounds == ["swallowed"]
    assert not background.running


async def test_start_runs_each_job_once_however_often_it_is_called() -> None:
    started: list[str] = []

    async def job() -> None:
        started.append("job")
        await asyncio.Event().wait()

    background = Background("test")
    background.start(job)
    background.start(job)
    await asyncio.sleep(0)
    assert started == ["job"] and background.running
    await background.stop()
    background.start(job)  # started again after a stop
    await asyncio.sleep(0)
    assert started == ["job", "job"]
    await background.stop()


async def test_a_job_that_crashes_is_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    async def flush() -> None:
        raise RuntimeError("boom")

    background = Background("traffic")
    with caplog.at_level(logging.ERROR, logger="edge"):
        background.start(flush)
        await asyncio.sleep(0.01)
    await background.stop()
    assert "background task traffic: flush stopped" in caplog.text
    assert "boom" in caplog.text
