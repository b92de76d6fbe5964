"""`edge serve` in a process of its own: a config file written for it, its memory, its logs."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.ports import free_port, wait_for_port


class EdgeProcess:
    """``edge serve --config`` with the config ``raw`` (as tests.support.settings.settings_for
    builds it), on free ports; everything it logs goes to a file beside the config."""

    def __init__(
        self,
        raw: dict[str, Any],
        directory: Path,
        descriptors: tuple[int, int] | None = None,
    ) -> None:
        self.port, self.admin_port = free_port(), free_port()
        raw = {
            **raw,
            "server": {**raw["server"], "port": self.port},
            "admin": {**raw["admin"], "port": self.admin_port},
        }
        self.config = directory / "edge.toml"
        self.config.write_text(to_toml(raw))
        self.log = directory / "edge.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.descriptors = descriptors  # its RLIMIT_NOFILE (soft, hard); None: this process's

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> EdgeProcess:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                # A group of its own, so that its workers are stopped with it; faulthandler,
                # so that a process that hangs can be asked where (wait_exit).
                start_new_session=True,
                env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                preexec_fn=self._limit_descriptors if self.descriptors else None,
            )
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"edge did not start:\n{self.output()}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _limit_descriptors(self) -> None:
        assert self.descriptors is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.descriptors)

    def open_descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def logged(self, containing: str) -> list[str]:
        """The messages of the JSON log lines that contain ``containing``."""
        entries = [json.loads(line) for line in self.output().splitlines() if line[:1] == "{"]
        return [entry["message"] for entry in entries if containing in entry["message"]]

    def started(self) -> dict[str, Any]:
        """The one start-up log line: what this edge runs with."""
        entries = [json.loads(line) for line in self.output().splitlines() if line[:1] == "{"]
        [line] = [entry for entry in entries if entry["message"] == "edge starting"]
        return dict(line)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait_exit(self, timeout: float) -> int:
        """The exit status; a process group still running after ``timeout`` seconds is made to
        dump every thread's stack (SIGABRT to faulthandler) and the test fails with its log."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGABRT)
            self.process.wait(10)
            raise AssertionError(f"edge did not exit in {timeout} s:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def peak_rss(self) -> int:
        """The process's peak resident memory so far (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")


def to_toml(raw: dict[str, Any]) -> str:
    """Sections of keys → TOML; enough for edge's configs (strings, numbers, lists, tables)."""
    lines: list[str] = []
    for section, keys in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_value(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_value(item)}" for key, item in value.items()) + "}"
    return "[" + ", ".join(_value(item) for item in value) + "]"
