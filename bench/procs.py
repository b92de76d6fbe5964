"""The processes under test: start on a free loopback port, wait until they listen, stop, and read
their memory from /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.process import to_toml


class Service:
    """One server process, its output in a log file (a pipe nobody reads would block it)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log: Path,
        env: Mapping[str, str] | None = None,
        serves_in_child: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.serves_in_child = serves_in_child  # nginx: a master and one worker
        self.argv = list(argv)
        self.port = port
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd  # `python -m` imports from here first, before PYTHONPATH
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Service:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
            )
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; its log:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def serving_pid(self) -> int:
        """The process that handles the requests: nginx's worker, else the process itself."""
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        pid = self.process.pid
        if not self.serves_in_child:
            return pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) != 1:
            raise RuntimeError(f"{self.name} should have one worker process, has {children}")
        return int(children[0])


def edge_serve(raw: dict[str, Any], work: Path, launcher: Sequence[str] = ()) -> Service:
    """`edge serve` with the settings ``raw`` (as tests.support.settings.settings_for builds
    them) on free ports, its config and log in ``work``, under ``launcher`` (valgrind) if given;
    started."""
    port = free_port()
    raw = {**raw, "server": {**raw["server"], "port": port}, "admin": {**raw["admin"]}}
    raw["admin"]["port"] = free_port()
    config = work / "edge.toml"
    config.write_text(to_toml(raw))
    argv = [*launcher, sys.executable, "-m", "edge", "serve", "--config", str(config)]
    return Service("edge", argv, port, work / "edge.log").start(300 if launcher else 30)


def reset_peak_rss(pid: int) -> None:
    """Start a new high-water mark at the current RSS (Linux 4.0+, own processes)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss(pid: int) -> int:
    """VmHWM in bytes: the most resident memory since the last reset."""
    return _status_kib(pid, "VmHWM") * 1024


def rss(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False
