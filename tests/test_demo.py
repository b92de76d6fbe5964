"""`edge demo` as a person runs it: a real process, its banner, the commands the banner prints."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edge import config
from tests.support.ports import free_port, wait_for_port


@dataclass
class Demo:
    config: Path
    port: int
    admin_port: int
    banner: str

    def get(self, host: str, path: str, **headers: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", headers={"Host": host, **headers})


def demo_config(directory: Path) -> Path:
    """The built-in demo config on free ports, so that the test runs beside anything else."""
    ports = {"8080": free_port(), "8081": free_port(), "8082": free_port(), "9090": free_port()}
    text = config.DEMO_CONFIG.read_text()
    for default, port in ports.items():
        text = text.replace(f":{default}", f":{port}").replace(f"= {default}", f"= {port}")
    path = directory / "demo.toml"
    path.write_text(text)
    return path


@contextmanager
def running_demo(
    tmp_path: Path, command: list[str], env: dict[str, str] | None = None
) -> Iterator[Demo]:
    path = demo_config(tmp_path)
    settings = config.load(path, env={})
    stderr = tmp_path / "demo.err"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [*command, "demo", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "EDGE_CONFIG": "", **(env or {})},
        )
    try:
        wait_for_port(settings.admin.port, timeout=30)
        yield Demo(path, settings.server.port, settings.admin.port, stderr.read_text())
    finally:
        process.terminate()
        process.wait(30)


def printed_command(banner: str) -> list[str]:
    (line,) = (line for line in banner.splitlines() if "tenant set acme-gym setup" in line)
    return shlex.split(line)


@pytest.mark.parametrize("started_as", ["python -m edge", "the venv's edge script"])
def test_the_banner_prints_a_command_that_moves_a_tenant(tmp_path: Path, started_as: str) -> None:
    script = Path(sys.executable).with_name("edge")
    command = [sys.executable, "-m", "edge"] if started_as == "python -m edge" else [str(script)]
    # The script's directory is not on PATH, as after ./scripts/demo.
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if p != str(script.parent)
    )
    with running_demo(tmp_path, command, env={"PATH": path}) as demo:
        move = printed_command(demo.banner)
        assert move[: len(command)] == command
        assert move[-2:] == ["--config", str(demo.config)]
        moved = subprocess.run(move, capture_output=True, text=True, timeout=60, env={"PATH": path})
        assert moved.returncode == 0, moved.stderr
        assert "acme-gym: legacy → setup" in moved.stdout
        preview = demo.get("127.0.0.1", "/acme-gym/schedule")
        assert preview.status_code == 200 and "X-Edge-Mode <code>setup</code>" in preview.text


def test_the_demo_counts_down_to_its_sunset_and_says_how_to_see_the_portal_retired(
    tmp_path: Path,
) -> None:
    with running_demo(tmp_path, [sys.executable, "-m", "edge"]) as demo:
        assert "The Parent Portal retires at 2028-06-30T22:00:00+00:00" in demo.banner
        assert "EDGE_POLICY__LEGACY_SUNSET=2020-01-01T00:00:00Z" in demo.banner
        assert demo.get("localhost", "/acme-gym/").status_code == 200


def test_the_demo_with_its_sunset_passed_shows_the_retired_portal(tmp_path: Path) -> None:
    past = {"EDGE_POLICY__LEGACY_SUNSET": "2020-01-01T00:00:00Z"}
    with running_demo(tmp_path, [sys.executable, "-m", "edge"], env=past) as demo:
        new_url = config.load(demo.config, env={}).new.public_url
        legacy = demo.get("localhost", "/acme-gym/classes")
        assert legacy.status_code == 410
        assert "This portal has been retired" in legacy.text
        assert "<a href" not in legacy.text  # a legacy tenant has no other portal to offer
        setup = demo.get("localhost", "/swim-school/classes")
        assert setup.status_code == 410
        assert f'<a href="{new_url}/swim-school/">Go to the Customer Portal</a>' in setup.text
        active = demo.get("localhost", "/dance-studio/classes")
        assert active.status_code == 302
        assert active.headers["location"] == f"{new_url}/dance-studio/schedule"
