"""The `edge` command as ops run it: a real process, real Redis, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import LEGACY_HOST, stack
from tests.support import RedisServer

CONFIG = """
[store]
url = "{url}"
prefix = "{prefix}"
[legacy]
hosts = ["parents.example.com"]
backend = "http://127.0.0.1:9001"
public_url = "https://parents.example.com"
[new]
hosts = ["portal.example.com"]
backend = "http://127.0.0.1:9002"
public_url = "https://portal.example.com"
"""


@pytest.fixture
def config_file(tmp_path: Path, redis_server: RedisServer, prefix: str) -> Iterator[Path]:
    path = tmp_path / "edge.toml"
    path.write_text(CONFIG.format(url=redis_server.url, prefix=prefix))
    yield path


def edge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_tenant_set_moves_forward_and_records_who(
    config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    c = str(config_file)
    moved = edge("tenant", "set", "acme-gym", "setup", "--actor", "alice", "--config", c)
    assert moved.returncode == 0, moved.stderr
    assert "legacy → setup" in moved.stdout
    assert redis_server.cli("GET", f"{prefix}mode:acme-gym") == "setup"
    got = edge("tenant", "get", "acme-gym", "--config", c)
    assert got.stdout.strip() == "acme-gym setup"
    history = edge("tenant", "history", "acme-gym", "--config", c)
    assert history.returncode == 0
    assert "legacy → setup" in history.stdout and "by alice (cli)" in history.stdout


def test_a_backwards_move_is_refused_without_force_and_changes_nothing(
    config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    c = str(config_file)
    assert edge("tenant", "set", "acme-gym", "active", "--config", c).returncode == 0
    refused = edge("tenant", "set", "acme-gym", "setup", "--config", c)
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    assert redis_server.cli("GET", f"{prefix}mode:acme-gym") == "active"
    assert redis_server.cli("LLEN", f"{prefix}history:acme-gym") == "1"
    forced = edge("tenant", "set", "acme-gym", "setup", "--force", "--actor", "bob", "--config", c)
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
    result = edge("tenant", "set", tenant, mode, "--config", str(config_file))
    assert result.returncode == 1
    assert message in result.stderr
    assert redis_server.cli("KEYS", f"{prefix}*") == ""


def test_tenant_list_shows_modes_and_filters(
    config_file: Path, redis_server: RedisServer, prefix: str
) -> None:
    redis_server.cli("SET", f"{prefix}mode:a-gym", "setup")
    redis_server.cli("SET", f"{prefix}mode:b-gym", "active")
    redis_server.cli("SET", f"{prefix}mode:c-gym", "bogus")
    listed = edge("tenant", "list", "--config", str(config_file))
    assert listed.returncode == 0
    lines = [line.split(None, 1) for line in listed.stdout.splitlines()]
    assert lines == [["a-gym", "setup"], ["b-gym", "active"], ["c-gym", "invalid (stored 'bogus')"]]
    only = edge("tenant", "list", "--mode", "active", "--config", str(config_file))
    assert only.stdout.split() == ["b-gym", "active"]


def test_the_config_comes_from_edge_config_when_no_flag_is_given(config_file: Path) -> None:
    result = edge("tenant", "get", "acme-gym", env={"EDGE_CONFIG": str(config_file)})
    assert result.returncode == 0
    assert result.stdout.strip() == "acme-gym legacy"


def test_an_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(CONFIG.format(url="redis://127.0.0.1:9/0", prefix="edge:"))
    result = edge("tenant", "set", "acme", "setup", "--config", str(path))
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr


def test_check_config_accepts_a_good_file_and_names_the_key_of_a_bad_one(
    config_file: Path, tmp_path: Path
) -> None:
    good = edge("check-config", "--config", str(config_file))
    assert good.returncode == 0
    assert "ok" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(config_file.read_text() + '\n[policy]\nlegacy_sunset = "soon"\n')
    refused = edge("check-config", "--config", str(bad))
    assert refused.returncode == 2
    assert "policy.legacy_sunset" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_bad_config_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = -1\n")
    result = edge("serve", "--config", str(bad))
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
            CONFIG.format(url="memory://", prefix="edge:")
            + f'[admin]\nport = {admin_port}\ntoken = "test-admin-token-0123456789"\n'
        )
        moved = edge("tenant", "set", "acme", "active", "--actor", "carol", "--config", str(path))
        assert moved.returncode == 0, moved.stderr
        with running.client() as client:
            response = client.get("/acme/", headers={"Host": LEGACY_HOST})
        assert response.status_code == 302
        refused = edge("tenant", "set", "acme", "legacy", "--config", str(path))
        assert refused.returncode == 1
        assert "--force" in refused.stderr
        history = edge("tenant", "history", "acme", "--config", str(path))
        assert "by carol" in history.stdout


def test_check_config_never_prints_the_store_password(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(CONFIG.format(url="redis://ops:s3cret-pw@127.0.0.1:6390/0", prefix="edge:"))
    result = edge("check-config", "--config", str(path))
    assert result.returncode == 0
    assert "s3cret-pw" not in result.stdout
    assert "redis://ops:***@127.0.0.1:6390/0" in result.stdout
