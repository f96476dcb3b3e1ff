"""``iogate check``: config validation, one row per resource, exit codes."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from iogate.cli.check import check_resources, run_check
from iogate.gateway.settings import parse_settings
from tests.conftest import free_port


async def check(config: Path | None) -> tuple[int, str]:
    """``run_check`` as the command runs it: in a thread of its own, so its
    ``asyncio.run`` never touches the test's event loop."""
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    code = await asyncio.to_thread(run_check, config, console=console)
    return code, out.getvalue()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose kernel completes the TCP handshake but no one ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def test_all_up_exits_zero(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    config = tmp_path / "iogate.toml"
    config.write_text(
        f"""
[databases.main]
type = "sqlite"
path = "{tmp_path / "main.db"}"

[databases.pg]
type = "postgresql"
url = "{postgres_url}"

[databases.cache]
type = "redis"
url = "{redis_url}"

[databases.mem]
type = "memory"
"""
    )
    code, text = await check(config)
    assert code == 0, text
    for name, kind in (("main", "sqlite"), ("pg", "postgresql"), ("cache", "redis")):
        line = next(line for line in text.splitlines() if f" {name} " in line)
        assert kind in line
        assert " up " in line
        assert " ms " in line
    assert "all 4 resources are up" in text


async def test_unreachable_database_exits_one_and_is_named(tmp_path: Path) -> None:
    dead = free_port()
    config = tmp_path / "iogate.toml"
    config.write_text(
        f"""
[databases.main]
type = "sqlite"
path = "{tmp_path / "main.db"}"

[databases.orders]
type = "postgresql"
url = "postgresql://app:s3cret-pw@127.0.0.1:{dead}/orders"
"""
    )
    code, text = await check(config)
    assert code == 1, text
    orders = next(line for line in text.splitlines() if " orders " in line)
    assert "DOWN" in orders
    main = next(line for line in text.splitlines() if " main " in line)
    assert " up " in main
    assert "down: orders" in text
    assert "s3cret-pw" not in text


async def test_a_silent_host_is_bounded_by_the_timeout(blackhole: int, tmp_path: Path) -> None:
    settings = parse_settings(
        f"""
[databases.silent_pg]
type = "postgresql"
url = "postgresql://postgres@127.0.0.1:{blackhole}/test"

[databases.silent_redis]
type = "redis"
url = "redis://127.0.0.1:{blackhole}/0"

[databases.main]
type = "sqlite"
path = "{tmp_path / "main.db"}"
""",
        env={},
    )
    started = time.monotonic()
    rows = await check_resources(settings, timeout=0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    status = {row.resource: row.status for row in rows}
    assert status == {"silent_pg": "down", "silent_redis": "down", "main": "up"}
    assert [row.resource for row in rows] == ["silent_pg", "silent_redis", "main"]


async def test_invalid_config_names_the_key_path(tmp_path: Path) -> None:
    config = tmp_path / "iogate.toml"
    config.write_text('[databases.main]\ntype = "sqlite"\npath = "x.db"\nmax_conections = 3\n')
    code, text = await check(config)
    assert code == 2  # a config error, not a resource that is down
    assert "databases.main.max_conections: unknown key" in text


async def test_embedded_default_is_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default SQLite file lands in the working directory
    code, text = await check(None)
    assert code == 0, text
    assert "all 2 resources are up" in text


def test_cli_command(tmp_path: Path) -> None:
    config = tmp_path / "iogate.toml"
    config.write_text(
        f'[databases.gone]\ntype = "postgresql"\nurl = "postgresql://u@127.0.0.1:{free_port()}/x"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "iogate.cli", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "gone" in result.stdout
    assert "DOWN" in result.stdout


def _keyed_config(tmp_path: Path, postgres_url: str, mysql_url: str, scopes: str) -> Path:
    config = tmp_path / "iogate.toml"
    config.write_text(
        f"""
[[gateway.api_keys]]
name = "someone"
key = "k-{os.getpid()}"
scopes = [{scopes}]

[databases.pg]
type = "postgresql"
url = "{postgres_url}"

[databases.maria]
type = "mysql"
url = "{mysql_url}"

[databases.named]
type = "postgresql"
url = "{postgres_url}"
allow_raw_sql = false
"""
    )
    return config


async def test_warns_when_untrusted_sql_runs_as_a_superuser(
    tmp_path: Path, postgres_url: str, mysql_url: str
) -> None:
    """The suite's servers log in as postgres and root: both are superusers."""
    config = _keyed_config(tmp_path, postgres_url, mysql_url, '"db:*:read"')
    code, out = await check(config)
    assert code == 0, out
    assert "warning: database 'pg'" in out
    assert "warning: database 'maria'" in out
    assert "'named'" not in out  # raw SQL is off there: nothing untrusted reaches it


async def test_no_warning_when_only_admin_keys_reach_the_database(
    tmp_path: Path, postgres_url: str, mysql_url: str
) -> None:
    config = _keyed_config(tmp_path, postgres_url, mysql_url, '"db:*:admin"')
    code, out = await check(config)
    assert code == 0, out
    assert "warning" not in out
