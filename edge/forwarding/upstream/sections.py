"""What the portal's bytes go through before the parser: a head (interim answers included) or a
trailer section reaches it within the configured bytes, and in whole lines after its first
read, so that no header value is built up by repeated concatenation and none grows without
bound. A body goes straight through."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from edge.forwarding.upstream.errors import UpstreamError, UpstreamProtocolError

if TYPE_CHECKING:
    from edge.forwarding.upstream.pool import UpstreamPool

_HEAD_END = b"\r\n\r\n"


class BoundedSections(asyncio.Protocol):
    """A ``Connection``'s reading half: its data_received, gated while a section is read."""

    # The gate's state, and the time of the portal's last progress that reads set.
    __slots__ = ("_gate", "_held", "_in_parts", "_last_progress", "_room", "_trailing")
    _gate: bytearray | None  # None: straight to the parser
    _held: bytearray  # a section's lines, held until whole
    _room: int  # bytes the section may still take
    _in_parts: bool  # the head came in more than one read
    _trailing: bool
    _last_progress: float
    # The connection's.
    pool: UpstreamPool
    closed: bool
    _loop: asyncio.AbstractEventLoop
    _parser: httptools.HttpResponseParser
    _head_done: bool
    fail: Callable[[BaseException], None]

    def data_received(self, data: bytes) -> None:
        gate = self._gate
        if gate is None:  # a body: straight to the parser
            self._last_progress = self._loop.time()
        elif self._in_parts or self._head_done or len(data) > self._room:
            self._through_gate(data)
            return
        else:  # the first read of a head, within the budget: parsed as it is
            self._room -= len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._unparsable(exc)
        if gate is not None and not self._head_done:
            # The head goes on in later reads: line by line from here, so that a value cut by
            # this read ends in one more piece, not one per read.
            self._in_parts = True

    def _through_gate(self, data: bytes) -> None:
        """Pass ``data`` to the parser in whole lines while a head or trailer section is read,
        holding a line's start until its end arrives; what follows the section goes straight.

        A head's bytes do not restart its timer: the whole head is due within read_timeout.
        """
        self._in_parts = True
        if self._head_done and not self._trailing:
            # A chunk header came last: its data follows, or the trailer section does. One byte
            # tells (on_body lifts the gate); a trailer section has a budget of its own.
            self._last_progress = self._loop.time()
            if not self._parse(data[:1]) or len(data) == 1:
                return
            if self._gate is None:
                self._parse(data[1:])
                return
            self._trailing = True
            self._room = self.pool.max_head_bytes - 1
            data = data[1:]
        held = self._held
        free = self._room - len(held)  # bytes this read may add to the section
        if not held:
            cut = data.find(_HEAD_END, 0, free) + 4
            if cut > 3:  # more than the budget in this read, but a head ends within it
                self._room = free - cut
                view = memoryview(data)
                if not self._parse(view[:cut]):
                    return
                if self._gate is None:
                    self._parse(view[cut:])
                else:
                    self._through_gate(data[cut:])  # after an interim answer: the next head
                return
        end = data.rfind(b"\n", 0, free) + 1  # whole lines, within the budget
        if not end:
            if len(data) >= free:
                self._too_large()
            else:
                held += data
            return
        self._room = free - end
        if held:
            held += memoryview(data)[:end]
            lines = bytes(held)
            held.clear()
        else:
            lines = data[:end]
        if not self._parse(lines) or end == len(data):
            return
        rest = data[end:]
        if self._gate is None or (self._head_done and not self._trailing):
            self.data_received(rest)  # the body, or a chunk header's data: as any read
        elif len(rest) >= self._room:
            self._too_large()
        else:
            held += rest

    def _parse(self, data: bytes | memoryview) -> bool:
        """Feed the parser; False once the connection has failed."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._unparsable(exc)
        return not self.closed

    def _unparsable(self, exc: httptools.HttpParserError) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            self.fail(UpstreamProtocolError("the portal switched protocols on a plain request"))
        elif isinstance(exc.__context__, UpstreamError):  # raised in a callback: it says why
            self.fail(exc.__context__)
        else:
            self.fail(UpstreamProtocolError(f"the portal's answer is not HTTP/1.1: {exc}"))

    def _too_large(self) -> None:
        section = "trailer section" if self._trailing else "head"
        limit = self.pool.max_head_bytes
        self.fail(UpstreamProtocolError(f"the portal's answer {section} is over {limit} bytes"))
