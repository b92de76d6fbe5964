"""What Redis tells edge about the mode keys, on one connection per Redis node.

The connection subscribes to edge's own events channel and, on Redis 6 and later, has Redis
track every write to the mode keys (``CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX
{prefix}mode:``): each SET, DEL, expiry or FLUSHDB, raw ``redis-cli`` edits included, arrives
as an invalidation message on ``__redis__:invalidate``. The connection speaks RESP2 whatever
the store's clients speak: with RESP3, Redis would send those messages as push replies that
the client library keeps to itself.

Tracking lives and dies with the connection, so a lost connection ends the stream loudly
(StoreUnavailable), and an idle one is pinged: one that stops answering is lost too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError, ResponseError

from edge.core.tenants import is_tenant_id
from edge.modes.base import KeysChanged, StoreNotice, StoreUnavailable, decode_event

log = logging.getLogger("edge.modes")

INVALIDATIONS = "__redis__:invalidate"
# Seconds of silence on a subscription before it is pinged.
IDLE_PING = 5.0


def resp2(make: Callable[..., AbstractConnection], kwargs: dict[str, Any]) -> AbstractConnection:
    """A new connection like the pool's (address, TLS, credentials, timeouts), in RESP2."""
    return make(**{**kwargs, "protocol": 2})


class Subscription:
    """One connection's notices: edge's events and, where tracked, the mode keys' writes."""

    def __init__(
        self,
        connection: AbstractConnection,
        *,
        prefix: str,
        channel: str,
        timeout: float,
    ) -> None:
        self.connection = connection
        self.mode_prefix = f"{prefix}mode:"
        self.channel = channel
        self.timeout = timeout
        self.tracked = False  # whether Redis reports the mode keys' writes here

    @property
    def where(self) -> str:
        return f"{getattr(self.connection, 'host', '?')}:{getattr(self.connection, 'port', '?')}"

    async def open(self) -> None:
        """Connect, track and subscribe, within the store timeout; raises StoreUnavailable."""
        try:
            async with asyncio.timeout(self.timeout * 4):  # four round trips
                await self.connection.connect()  # type: ignore[no-untyped-call]
                try:
                    own_id = await self._ask("CLIENT", "ID")
                    await self._ask(
                        "CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST",
                        "PREFIX", self.mode_prefix,
                    )  # fmt: skip
                    self.tracked = True
                except ResponseError as exc:  # before Redis 6, or not allowed by an ACL
                    log.warning(
                        "Redis at %s does not track the mode keys (%s): raw edits are found "
                        "by the periodic resync only, which then reads every cached tenant",
                        self.where,
                        exc,
                    )
                channels = [self.channel, *([INVALIDATIONS] if self.tracked else [])]
                await self.connection.send_command("SUBSCRIBE", *channels)
                for _ in channels:  # one confirmation each: no later write is missed
                    await self.connection.read_response()
        except (RedisError, OSError, TimeoutError) as exc:
            await self.close()
            raise StoreUnavailable(f"redis SUBSCRIBE at {self.where} failed: {exc}") from exc

    async def _ask(self, *command: Any) -> Any:
        await self.connection.send_command(*command)
        return await self.connection.read_response()

    async def notices(self) -> AsyncIterator[StoreNotice]:
        """The notices as they arrive; raises StoreUnavailable once the connection is lost."""
        connection = self.connection
        while True:
            try:
                reply = await connection.read_response(timeout=IDLE_PING)
                if reply is None:  # silence: is anyone there?
                    await connection.send_command("PING")
                    reply = await connection.read_response(timeout=self.timeout)
                    if reply is None:
                        raise TimeoutError(f"no answer to PING within {self.timeout} s")
            except (RedisError, OSError, TimeoutError) as exc:
                raise StoreUnavailable(f"redis subscription at {self.where} lost: {exc}") from exc
            notice = self._notice(reply)
            if notice is not None:
                yield notice

    def _notice(self, reply: Any) -> StoreNotice | None:
        """A pushed message → its notice; None for a pong or anything not for edge."""
        if not isinstance(reply, list) or len(reply) != 3 or reply[0] != "message":
            return None
        _, channel, data = reply
        if channel == self.channel:
            return decode_event(data) if isinstance(data, str) else None
        if channel != INVALIDATIONS:
            return None
        if data is None:  # FLUSHDB, FLUSHALL: every key may have changed
            return KeysChanged(None)
        skip = len(self.mode_prefix)
        tenants = tuple(
            key[skip:]
            for key in data
            if isinstance(key, str)
            and key.startswith(self.mode_prefix)
            and is_tenant_id(key[skip:])
        )
        return KeysChanged(tenants) if tenants else None

    async def close(self) -> None:
        with suppress(RedisError, OSError):
            await self.connection.disconnect(nowait=True)


async def merged(
    streams: Sequence[AsyncIterator[StoreNotice]], watch: Awaitable[None]
) -> AsyncIterator[StoreNotice]:
    """The notices of several streams as they come; the first failure of any stream, or the end
    of ``watch``, ends them all (``watch`` raises StoreUnavailable to say why)."""
    queue: asyncio.Queue[StoreNotice | BaseException] = asyncio.Queue()

    async def pump(stream: AsyncIterator[StoreNotice]) -> None:
        try:
            async for notice in stream:
                queue.put_nowait(notice)
            queue.put_nowait(StoreUnavailable("a Redis subscription ended"))
        except Exception as exc:  # handed to the reader, who raises it
            queue.put_nowait(exc)

    async def watching() -> None:
        try:
            await watch
            queue.put_nowait(StoreUnavailable("the Redis nodes changed"))
        except Exception as exc:  # handed to the reader, who raises it
            queue.put_nowait(exc)

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    tasks.append(asyncio.create_task(watching()))
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
