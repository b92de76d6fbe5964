"""The public listener's HTTP/1.1 protocol: uvicorn's httptools protocol with bounded request heads.

Neither llhttp nor uvicorn limits a request line or a header section: both are buffered until
they end, however long that takes. Here a request target over the limit gets 414, a header
section over it gets 431, and the connection is closed before the app sees the request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edge.config import ServerSettings

# Reads are at most this long (uvloop and asyncio both read 256 KiB at a time). A head still
# open is measured in whole reads, so the first may also hold the end of the request before.
_READ_MAX = 256 * 1024


@dataclass(frozen=True, slots=True)
class HeadLimits:
    url_bytes: int  # the request target: path and query
    header_bytes: int  # header names and values, all together
    headers: int  # header fields

    @classmethod
    def from_settings(cls, server: ServerSettings) -> HeadLimits:
        return cls(server.max_url_bytes, server.max_header_bytes, server.max_headers)

    def protocol(self) -> type[asyncio.Protocol]:
        """For uvicorn.Config(http=...): uvicorn calls it as a class; a partial pickles to
        worker processes with the limits in it."""
        return cast("type[asyncio.Protocol]", partial(BoundedHttpToolsProtocol, limits=self))


class _HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: HeadLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        # A head still open past this cannot fit the limits (": " and CRLF are 4 bytes a header,
        # 64 covers the method and version), even counting a whole read before it began.
        self.head_budget = (
            limits.url_bytes + limits.header_bytes + 4 * limits.headers + 64 + _READ_MAX
        )
        self.reading_head = False
        self.head_seen = 0  # bytes of the reads that hold the current head: an upper bound
        self.last_read = 0
        self.refusal = 0  # 414 or 431 once a head is over its limit

    def data_received(self, data: bytes) -> None:
        if self.refusal:
            return
        self.last_read = len(data)
        if self.reading_head:
            self.head_seen += len(data)
        super().data_received(data)
        if self.reading_head and self.head_seen > self.head_budget and not self.refusal:
            self.refuse(431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True
        self.head_seen = self.last_read

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.url_bytes:
            self.refusal = 414
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self.reading_head = False
        limits = self.limits
        headers = self.headers
        if len(headers) > limits.headers or (
            self.head_seen > limits.header_bytes
            and sum(len(name) + len(value) for name, value in headers) > limits.header_bytes
        ):
            self.refusal = 431
            raise _HeadTooLarge
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to any parser error, ours included: a callback raised to stop llhttp.
        if self.refusal:
            self.refuse(self.refusal)
        else:
            super().send_400_response(msg)

    def refuse(self, status: int) -> None:
        self.refusal = status
        body = _MESSAGES[status]
        self.transport.write(
            b"%scontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (STATUS_LINE[status], len(body), body)
        )
        self.transport.close()


_MESSAGES = {
    414: b"URI Too Long: the request target is longer than this server accepts.\n",
    431: b"Request Header Fields Too Large: the request headers are larger than this server "
    b"accepts.\n",
}
