"""Several edge instances on one store, customers hitting them, and ops changing modes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from edge.config import StoreSettings
from edge.core.tenants import Mode
from edge.modes import open_store
from edge.moves.service import Moves
from tests.support.cli import write_cli_config
from tests.support.settings import LEGACY_HOST
from tests.support.stack import Stack, stack

# What the legacy front answers a GET with, by mode: forwarded (200) or redirected (302).
ANSWER = {Mode.LEGACY: 200, Mode.SETUP: 200, Mode.ACTIVE: 302}


@contextmanager
def fleet(
    instances: int, store: dict[str, Any], resync_interval: float = 0.2
) -> Iterator[list[Stack]]:
    """``instances`` edge instances on the store's url and prefix, each with its own recording
    backends. A long ``resync_interval`` leaves raw edits to Redis's invalidation messages."""
    settings = {"resync_interval": resync_interval}
    with ExitStack() as running:
        yield [
            running.enter_context(stack(store["url"], store["prefix"], store_settings=settings))
            for _ in range(instances)
        ]


def answer(instance: Stack, tenant: str) -> int:
    """The status a customer gets for the tenant's legacy home page on this instance."""
    with instance.client() as client:
        return client.get(f"/{tenant}/", headers={"Host": LEGACY_HOST}).status_code


def answers_as_set(
    instances: list[Stack], modes: dict[str, Mode], unknown: tuple[str, ...] = ()
) -> dict[str, int]:
    """Every instance answers each tenant as ``modes`` says, and each ``unknown`` one (no key
    yet) as a legacy tenant; the answers expected, for ``Traffic``."""
    expected = {tenant: ANSWER[mode] for tenant, mode in modes.items()}
    for instance in instances:
        assert {tenant: answer(instance, tenant) for tenant in modes} == expected
        for tenant in unknown:
            assert answer(instance, tenant) == ANSWER[Mode.LEGACY]
    return expected


def fleet_config(path: Path, store: dict[str, Any], instance: Stack) -> Path:
    """A config file for the CLI: the store's settings, and the instance's new backend (a
    move to active first checks, through the CLI, that recorded pages answer there)."""
    backend = instance.edge.settings.new.backend
    return write_cli_config(path, store["url"], legacy=backend, new=backend, store=store)


def set_modes(store: dict[str, Any], modes: dict[str, Mode]) -> None:
    """Set modes through a store of this process's own, as the CLI would."""

    async def run() -> None:
        opened = open_store(StoreSettings(**store))
        try:
            for tenant, mode in modes.items():
                await Moves(opened).set_mode(tenant, mode, actor="test-seed")
        finally:
            await opened.close()

    asyncio.run(run())


def read_modes(store: dict[str, Any], tenants: list[str]) -> list[str | None]:
    async def run() -> list[str | None]:
        opened = open_store(StoreSettings(**store))
        try:
            return await opened.get_many(tenants)
        finally:
            await opened.close()

    return asyncio.run(run())


class Traffic:
    """Customers in threads asking every instance, in turn, for tenants whose answer is known.

    Every answer that differs from the expected one is kept in ``wrong``.
    """

    def __init__(self, instances: list[Stack], expected: dict[str, int], clients: int = 3):
        self.instances = instances
        self.expected = expected
        self.answered = 0
        self.wrong: list[tuple[str, int | str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._customer, daemon=True) for _ in range(clients)
        ]

    def _customer(self) -> None:
        clients = [instance.client() for instance in self.instances]
        try:
            while not self._stop.is_set():
                for client in clients:
                    for tenant, status in self.expected.items():
                        try:
                            got: int | str = client.get(
                                f"/{tenant}/", headers={"Host": LEGACY_HOST}
                            ).status_code
                        except httpx.HTTPError as exc:
                            got = repr(exc)
                        self.answered += 1
                        if got != status:
                            self.wrong.append((tenant, got))
                        time.sleep(0.005)  # a customer, not a benchmark: leave the CPU to edge
        finally:
            for client in clients:
                client.close()

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
