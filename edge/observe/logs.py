"""The process's logs: one JSON object per line on stdout, the access log off the event loop.

Every line has ``time``, ``level`` and ``logger``; other logs add ``message`` and their
``extra`` fields, access lines add the request's fields. The access log skips the logging
machinery (a record, a formatter and a locked handler per request would cost more than the
metrics): each line is built with orjson on the loop and queued; a thread writes the queue
out in batches, so a slow stdout never blocks the loop. When the queue is full lines are dropped
and counted, rather than memory growing without bound.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import sys
import threading
from datetime import UTC, datetime
from typing import Any

import orjson

from edge.config import ServerSettings
from edge.observe.served import Served

ACCESS_LOGGER = "edge.access"
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
# Writes up to PIPE_BUF bytes are atomic on a pipe: lines from several worker processes
# sharing one stdout never interleave within a line.
_BATCH = select.PIPE_BUF
# What every LogRecord has; anything else on a record came in as ``extra``. uvicorn adds a
# terminal-coloured copy of its message.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """A log record → one JSON line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        options = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS
        return orjson.dumps(line, option=options, default=str).decode()


def configure(server: ServerSettings) -> None:
    """Send every log of this process (edge's and uvicorn's) to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(server.log_level.upper())


def access_log_enabled(server: ServerSettings) -> bool:
    """Access lines are at level info: on with ``access_log`` and a level of info or debug."""
    return server.access_log and server.log_level in ("debug", "info")


class AccessLog:
    """Queues access lines on the loop; a thread writes them to ``fd`` in batches."""

    # Flushed every 10 ms: with 100 ms the access log cost twice the throughput (measured),
    # most likely because a longer queue of lines pushes the request path's data out of cache.
    def __init__(self, fd: int = 1, *, max_pending: int = 65_536, interval: float = 0.01) -> None:
        self.fd = fd
        self.max_pending = max_pending
        self.interval = interval
        self.dropped = 0  # lines not queued because the queue was full (loop thread only)
        self.failed = 0  # lines the writer could not write (writer thread only)
        self._pending: collections.deque[bytes] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, served: Served) -> None:
        """Queue the access line of one request."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            return
        upstream = served.upstream_seconds
        line = {
            "time": datetime.now(UTC),
            "level": "info",
            "logger": ACCESS_LOGGER,
            "request_id": served.request_id,
            "method": served.method,
            "front": served.front,
            "tenant": served.tenant,
            "mode": served.mode,
            "decision": served.decision,
            "reason": served.reason,
            "status": served.status,
            "bytes": served.bytes,
            "duration_us": int(served.duration * 1e6),
            "upstream_us": None if upstream is None else int(upstream * 1e6),
            "path": served.path,
            "client": served.client,
            "error": served.error,
        }
        self._pending.append(orjson.dumps(line, option=_OPTIONS))

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="edge-access-log", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Write out what is queued and stop the writer."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        batch: list[bytes] = []
        size = 0
        while pending:
            line = pending.popleft()
            if batch and size + len(line) > _BATCH:
                self._write(batch)
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._write(batch)

    def _write(self, batch: list[bytes]) -> None:
        data = memoryview(b"".join(batch))
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            self.failed += len(batch)
