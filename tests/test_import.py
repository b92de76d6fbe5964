"""`edge tenant import FILE.csv`: the real command, a real Redis, a real terminal for the bar."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from edge.modes import MemoryStore
from edge.moves.importer import BadRow, Row, read_rows
from tests.support.cli import cli_config, run_cli
from tests.support.redis import RedisServer
from tests.support.settings import ADMIN_TOKEN
from tests.support.stack import stack


def csv_file(tmp_path: Path, text: str, name: str = "moves.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def modes(redis_server: RedisServer, prefix: str, *tenants: str) -> list[str]:
    return redis_server.cli("MGET", *(f"{prefix}mode:{t}" for t in tenants)).split("\n")


# Reading the file


@pytest.mark.parametrize(
    ("text", "rows", "bad"),
    [
        ("acme,setup\nswim,active\n", [(1, "acme", "setup"), (2, "swim", "active")], []),
        ("tenant,mode\nacme,setup\n", [(2, "acme", "setup")], []),
        ("\ufeffTenant , Mode\r\n acme , setup \r\n", [(2, "acme", "setup")], []),
        ("\n\nacme,setup\n\n,\n", [(3, "acme", "setup")], []),
        ('"acme","setup"\n', [(1, "acme", "setup")], []),
        ("acme\nswim,setup,extra\nok,active\n", [(3, "ok", "active")], [1, 2]),
        ("acme,setup\ntenant,mode\n", [(1, "acme", "setup"), (2, "tenant", "mode")], []),
        ('acme,"setup\n', [], [1]),
        ('a,b\nacme,"set"up\nc,d\n', [(1, "a", "b")], [2]),
        ("", [], []),
    ],
)
def test_rows_are_read_with_their_line_numbers(
    tmp_path: Path, text: str, rows: list[tuple[int, str, str]], bad: list[int]
) -> None:
    path = tmp_path / "moves.csv"
    path.write_bytes(text.encode())
    read, wrong = read_rows(path)
    assert read == [Row(*row) for row in rows]
    assert [row.line for row in wrong] == bad
    assert all(isinstance(row, BadRow) and row.reason for row in wrong)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path, config_file: Path) -> None:
    path = tmp_path / "moves.csv"
    path.write_bytes(b"caf\xe9,setup\n")
    result = run_cli("tenant", "import", str(path), "--config", str(config_file))
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "utf-8" in result.stderr
    missing = run_cli("tenant", "import", str(tmp_path / "nope.csv"), "--config", str(config_file))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


# The command


def test_an_import_moves_every_row_and_sums_up(
    tmp_path: Path, config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:swim", "setup")
    path = csv_file(tmp_path, "tenant,mode\nacme,setup\nswim,setup\ndance,active\n")

    result = run_cli("tenant", "import", str(path), "--actor", "hal", "--config", str(config_file))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "moved 2, unchanged 1, refused 0"
    assert "%|" not in result.stderr  # no progress bar off a terminal
    assert modes(redis_server, prefix, "acme", "swim", "dance") == ["setup", "setup", "active"]
    history = run_cli("tenant", "history", "dance", "--config", str(config_file))
    assert "by hal (import)" in history.stdout


def test_a_dry_run_says_what_would_change_and_changes_nothing(
    tmp_path: Path, config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:swim", "setup")
    path = csv_file(tmp_path, "acme,active\nswim,setup\n")

    result = run_cli("tenant", "import", str(path), "--dry-run", "--config", str(config_file))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "acme: legacy → active",
        "dry run, nothing changed: would be moved 1, unchanged 1, refused 0",
    ]
    assert redis_server.cli("KEYS", f"{prefix}*").split() == [f"{prefix}mode:swim"]


def test_every_bad_row_is_named_with_its_line_and_nothing_changes(
    tmp_path: Path, config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:north", "active")
    path = csv_file(
        tmp_path,
        "tenant,mode\n"
        "acme,setup\n"  # fine
        "Bad_Id,setup\n"  # 3: not a tenant id
        "swim,live\n"  # 4: not a mode
        "north,setup\n"  # 5: backwards
        "acme,active\n"  # 6: twice
        "lonely\n",  # 7: one column
    )

    result = run_cli("tenant", "import", str(path), "--config", str(config_file))

    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(":")[1] for line in lines[:-1]] == ["3", "4", "5", "6", "7"]
    assert "not a tenant id" in lines[0] and "not a mode" in lines[1]
    assert "needs --force" in lines[2] and "more than once" in lines[3]
    assert "2 columns" in lines[4]
    assert lines[-1] == "edge: refused: 5 bad rows; nothing changed"
    assert redis_server.cli("KEYS", f"{prefix}*").split() == [f"{prefix}mode:north"]


def test_force_lets_an_import_roll_tenants_back(
    tmp_path: Path, config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("MSET", f"{prefix}mode:north", "active", f"{prefix}mode:south", "setup")
    path = csv_file(tmp_path, "north,legacy\nsouth,legacy\n")
    c = ("--config", str(config_file))
    assert run_cli("tenant", "import", str(path), *c).returncode == 1
    result = run_cli("tenant", "import", str(path), "--force", *c)
    assert result.returncode == 0, result.stderr
    assert modes(redis_server, prefix, "north", "south") == ["legacy", "legacy"]
    assert "forced" in run_cli("tenant", "history", "north", *c).stdout


def on_a_terminal(*args: str) -> tuple[int, str]:
    """Run the edge command with a pseudo-terminal (80x24) as its stdout and stderr."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the command has exited and closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(60), output.decode()


def test_a_terminal_shows_a_progress_bar(
    tmp_path: Path, config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    tenants = [f"gym-{n}" for n in range(450)]
    path = csv_file(tmp_path, "".join(f"{t},setup\n" for t in tenants))

    code, screen = on_a_terminal("tenant", "import", str(path), "--config", str(config_file))

    assert code == 0, screen
    assert "450/450" in screen and "100%|" in screen
    assert "moved 450, unchanged 0, refused 0" in screen
    assert set(modes(redis_server, prefix, *tenants)) == {"setup"}


def test_with_the_embedded_store_an_import_goes_through_the_admin_api(tmp_path: Path) -> None:
    tenants = [f"gym-{n}" for n in range(450)]  # more than one chunk
    path = csv_file(tmp_path, "".join(f"{t},active\n" for t in tenants))
    bad = csv_file(tmp_path, "gym-1,legacy\nBad,setup\n", "bad.csv")
    store = MemoryStore()
    with stack("memory://", "edge:", store=store) as running:
        config = tmp_path / "demo.toml"
        config.write_text(
            cli_config("memory://", "edge:")
            + f'[admin]\nport = {running.admin_url.rsplit(":", 1)[1]}\ntoken = "{ADMIN_TOKEN}"\n'
        )
        c = ("--config", str(config))

        dry = run_cli("tenant", "import", str(path), "--dry-run", *c)
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines()[-1].endswith("would be moved 450, unchanged 0, refused 0")
        assert run_cli("tenant", "list", *c).stdout == ""
        done = run_cli("tenant", "import", str(path), "--actor", "ivy", *c)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "moved 450, unchanged 0, refused 0"
        refused = run_cli("tenant", "import", str(bad), "--force", *c)
        assert refused.returncode == 1
        assert refused.stderr.splitlines()[0].startswith(f"{bad}:2: 'Bad' is not a tenant id")
        history = run_cli("tenant", "history", "gym-449", *c)
        assert "by ivy (api)" in history.stdout
