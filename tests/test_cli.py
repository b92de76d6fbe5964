"""The `edge` command as ops run it: a real process, real Redis, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.cli import cli_config, run_cli
from tests.support.ports import free_port, wait_for_port
from tests.support.redis import RedisServer
from tests.support.settings import LEGACY_HOST
from tests.support.stack import stack


def test_tenant_set_moves_forward_and_records_who(
    config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    c = str(config_file)
    moved = run_cli("tenant", "set", "acme-gym", "setup", "--actor", "alice", "--config", c)
    assert moved.returncode == 0, moved.stderr
    assert "legacy → setup" in moved.stdout
    assert redis_server.cli("GET", f"{prefix}mode:acme-gym") == "setup"
    got = run_cli("tenant", "get", "acme-gym", "--config", c)
    assert got.stdout.strip() == "acme-gym setup"
    history = run_cli("tenant", "history", "acme-gym", "--config", c)
    assert history.returncode == 0
    assert "legacy → setup" in history.stdout and "by alice (cli)" in history.stdout


@pytest.mark.parametrize("actor", ["alice\nforged", "esc\x1b[2J", "rtl\u202eecila", " "])
def test_an_actor_that_could_forge_the_history_is_refused_and_changes_nothing(
    config_file: Path, redis_server: RedisServer, prefix: str, actor: str
) -> None:
    c = str(config_file)
    refused = run_cli("tenant", "set", "acme-gym", "setup", "--actor", actor, "--config", c)
    assert refused.returncode == 1
    assert "actor" in refused.stderr or "control character" in refused.stderr
    assert redis_server.cli("EXISTS", f"{prefix}mode:acme-gym") == "0"
    assert redis_server.cli("EXISTS", f"{prefix}history:acme-gym") == "0"
    # The same move with a name in plain text is made: the refusal was the actor's.
    moved = run_cli("tenant", "set", "acme-gym", "setup", "--actor", "Zoë (ops)", "--config", c)
    assert moved.returncode == 0, moved.stderr


def test_history_shows_a_recorded_control_character_escaped(
    config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    c = str(config_file)
    assert (
        run_cli("tenant", "set", "acme-gym", "setup", "--actor", "alice", "--config", c).returncode
        == 0
    )
    # An entry written by hand (or before actors had to be printable) with an ESC in it.
    entry = json.loads(redis_server.cli("LINDEX", f"{prefix}history:acme-gym", "0"))
    entry["actor"] = "mallory\x1b[2J\nforged line"
    redis_server.cli("LSET", f"{prefix}history:acme-gym", "0", json.dumps(entry))
    history = run_cli("tenant", "history", "acme-gym", "--config", c)
    assert history.returncode == 0
    assert "\x1b" not in history.stdout and history.stdout.count("\n") == 1
    assert "by mallory\\x1b[2J\\nforged line (cli)" in history.stdout


def test_a_backwards_move_is_refused_without_force_and_changes_nothing(
    config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    c = str(config_file)
    assert run_cli("tenant", "set", "acme-gym", "active", "--config", c).returncode == 0
    refused = run_cli("tenant", "set", "acme-gym", "setup", "--config", c)
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    assert redis_server.cli("GET", f"{prefix}mode:acme-gym") == "active"
    assert redis_server.cli("LLEN", f"{prefix}history:acme-gym") == "1"
    forced = run_cli(
        "tenant", "set", "acme-gym", "setup", "--force", "--actor", "bob", "--config", c
    )
    assert forced.returncode == 0
    assert "(forced)" in forced.stdout
    assert redis_server.cli("GET", f"{prefix}mode:acme-gym") == "setup"


@pytest.mark.parametrize(
    ("tenant", "mode", "message"),
    [
        ("Acme", "setup", "not a tenant id"),
        ("acme", "live", "not a mode"),
        ("a_b", "setup", "not a tenant id"),
    ],
)
def test_bad_tenants_and_modes_are_refused(
    config_file: Path, redis_server: RedisServer, prefix: str, tenant: str, mode: str, message: str
) -> None:
    result = run_cli("tenant", "set", tenant, mode, "--config", str(config_file))
    assert result.returncode == 1
    assert message in result.stderr
    assert redis_server.cli("KEYS", f"{prefix}*") == ""


def test_tenant_list_shows_modes_and_filters(
    config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:a-gym", "setup")
    redis_server.cli("SET", f"{prefix}mode:b-gym", "active")
    redis_server.cli("SET", f"{prefix}mode:c-gym", "bogus")
    listed = run_cli("tenant", "list", "--config", str(config_file))
    assert listed.returncode == 0
    lines = [line.split(None, 1) for line in listed.stdout.splitlines()]
    assert lines == [["a-gym", "setup"], ["b-gym", "active"], ["c-gym", "invalid (stored 'bogus')"]]
    only = run_cli("tenant", "list", "--mode", "active", "--config", str(config_file))
    assert only.stdout.split() == ["b-gym", "active"]


def test_the_config_comes_from_edge_config_when_no_flag_is_given(config_file: Path) -> None:
    result = run_cli("tenant", "get", "acme-gym", env={"EDGE_CONFIG": str(config_file)})
    assert result.returncode == 0
    assert result.stdout.strip() == "acme-gym legacy"


def test_an_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(cli_config("redis://127.0.0.1:9/0", "edge:"))
    result = run_cli("tenant", "set", "acme", "setup", "--config", str(path))
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr


def test_check_config_accepts_a_good_file_and_names_the_key_of_a_bad_one(
    config_file: Path, tmp_path: Path
) -> None:
    good = run_cli("check-config", "--config", str(config_file))
    assert good.returncode == 0
    assert "ok" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(config_file.read_text() + '\n[policy]\nlegacy_sunset = "soon"\n')
    refused = run_cli("check-config", "--config", str(bad))
    assert refused.returncode == 2
    assert "policy.legacy_sunset" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_bad_config_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = -1\n")
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_with_the_embedded_store_the_cli_moves_tenants_through_the_admin_api(
    tmp_path: Path,
) -> None:
    from edge.modes import MemoryStore

    store = MemoryStore()
    with stack("memory://", "edge:", store=store) as running:
        admin_port = running.admin_url.rsplit(":", 1)[1]
        path = tmp_path / "demo.toml"
        path.write_text(
            cli_config("memory://", "edge:")
            + f'[admin]\nport = {admin_port}\ntoken = "test-admin-token-0123456789"\n'
        )
        moved = run_cli(
            "tenant", "set", "acme", "active", "--actor", "carol", "--config", str(path)
        )
        assert moved.returncode == 0, moved.stderr
        with running.client() as client:
            response = client.get("/acme/", headers={"Host": LEGACY_HOST})
        assert response.status_code == 302
        refused = run_cli("tenant", "set", "acme", "legacy", "--config", str(path))
        assert refused.returncode == 1
        assert "--force" in refused.stderr
        history = run_cli("tenant", "history", "acme", "--config", str(path))
        assert "by carol" in history.stdout


def test_check_config_never_prints_the_store_password(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(cli_config("redis://ops:s3cret-pw@127.0.0.1:6390/0", "edge:"))
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0
    assert "s3cret-pw" not in result.stdout
    assert "redis://ops:***@127.0.0.1:6390/0" in result.stdout


# ------------------------------------------------------------- the config given is the one used

# Every command, with what it needs besides --config.
COMMANDS = [
    ["serve"],
    ["demo"],
    ["check-config"],
    ["tenant", "get", "acme"],
    ["tenant", "set", "acme", "setup"],
    ["tenant", "list"],
    ["tenant", "history", "acme"],
    ["tenant", "preview-link", "acme"],
    ["tenant", "readiness", "acme"],
    ["tenant", "watch", "acme"],
    ["tenant", "schedule", "acme", "active", "--at", "2030-01-01T00:00Z"],
    ["tenant", "schedules"],
    ["tenant", "unschedule", "acme"],
    ["tenant", "import", "moves.csv"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_takes_config_before_or_after_its_name(command: list[str]) -> None:
    from edge.cli import given_config, parser

    before = parser().parse_args(["--config", "a.toml", *command])
    after = parser().parse_args([*command, "--config", "a.toml"])
    neither = parser().parse_args(command)
    assert given_config(before) == given_config(after) == "a.toml"
    assert given_config(neither) is None


def test_config_given_twice_with_two_paths_is_refused() -> None:
    result = run_cli("--config", "a.toml", "check-config", "--config", "b.toml")
    assert result.returncode == 2
    assert "--config is given twice" in result.stderr


def test_config_before_and_after_the_command_is_the_same_config(config_file: Path) -> None:
    before = run_cli("--config", str(config_file), "check-config", env={"EDGE_CONFIG": ""})
    after = run_cli("check-config", "--config", str(config_file), env={"EDGE_CONFIG": ""})
    assert before.returncode == after.returncode == 0, before.stderr
    assert before.stdout == after.stdout
    assert before.stdout.startswith(f"{config_file}: ok")
    assert "redis://127.0.0.1" in before.stdout  # the file's store, not the demo's memory://


def test_the_flag_wins_over_edge_config(config_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text(cli_config("memory://", "other:"))
    result = run_cli("--config", str(config_file), "check-config", env={"EDGE_CONFIG": str(other)})
    assert result.stdout.startswith(f"{config_file}: ok")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != ["demo"]], ids=" ".join)
def test_without_a_config_only_the_demo_runs(command: list[str]) -> None:
    result = run_cli(*command, env={"EDGE_CONFIG": ""})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "--config PATH" in line and "EDGE_CONFIG" in line and "edge demo" in line


def test_a_bad_config_is_refused_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(cli_config("ftp://x", "edge:") + "[server]\nport = -1\n")
    result = run_cli("serve", "--config", str(bad), env={"EDGE_SERVER__WORKERS": "none"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"edge: config error: {bad}: server.port: Input should be greater than or equal to 0",
        "edge: config error: EDGE_SERVER__WORKERS: Input should be a valid integer, "
        "unable to parse string as an integer",
        f"edge: config error: {bad}: store.url: unsupported scheme 'ftp': use redis://, "
        "rediss://, unix://, redis+sentinel://, redis+cluster:// (rediss+ for TLS) or memory://",
    ]


def test_version() -> None:
    from importlib.metadata import version

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edge {version('edge')}"


def _start_line(log: str) -> dict[str, object]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    starting = [line for line in lines if line.get("message") == "edge starting"]
    assert len(starting) == 1, log
    return starting[0]


@pytest.mark.parametrize("where", ["before", "after"])
def test_serve_runs_on_the_config_given_and_says_so_in_one_line(tmp_path: Path, where: str) -> None:
    port, admin_port = free_port(), free_port()
    path = tmp_path / "edge.toml"
    path.write_text(
        cli_config("redis://ops:s3cret-pw@127.0.0.1:9/0", "e:")
        + f'[server]\nhost = "127.0.0.1"\nport = {port}\n[admin]\nport = {admin_port}\n'
    )
    args = (
        ["--config", str(path), "serve"] if where == "before" else ["serve", "--config", str(path)]
    )
    log = tmp_path / "edge.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "EDGE_CONFIG": ""},
        )
    try:
        wait_for_port(port, timeout=30)
        response = httpx.get(f"http://127.0.0.1:{port}/acme/", headers={"Host": "nowhere.test"})
        assert response.status_code == 421  # the file's fronts: nowhere.test is not one
    finally:
        process.terminate()
        process.wait(30)
    text = log.read_text()
    assert "s3cret-pw" not in text
    line = _start_line(text)
    assert line["config"] == str(path.resolve())
    assert line["listen"] == f"127.0.0.1:{port}"
    assert line["admin"] == f"127.0.0.1:{admin_port}"
    assert line["legacy"] == {"hosts": ["parents.example.com"], "backend": "http://127.0.0.1:9001"}
    assert line["new"] == {"hosts": ["portal.example.com"], "backend": "http://127.0.0.1:9002"}
    assert line["store"] == {"url": "redis://ops:***@127.0.0.1:9/0", "prefix": "e:"}
