"""``iogate serve`` as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

IOGATE = [sys.executable, "-m", "iogate.cli"]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IOGATE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_config_typo_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "iogate.toml"
    config.write_text('[databases.main]\ntype = "sqlite"\npath = "x.db"\nmax_conections = 3\n')
    result = run_cli("serve", "--config", str(config), cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "databases.main.max_conections: unknown key" in lines[0]


def test_missing_variable_and_wrong_type(tmp_path: Path) -> None:
    config = tmp_path / "iogate.toml"
    config.write_text('[databases.main]\ntype = "postgresql"\nurl = "${IOGATE_NOT_SET_VAR}"\n')
    result = run_cli("serve", "-c", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "databases.main.url: environment variable IOGATE_NOT_SET_VAR is not set" in result.stderr
    config.write_text('[gateway]\nport = "eighty"\n')
    result = run_cli("serve", "-c", str(config), cwd=tmp_path)
    assert result.returncode != 0
    assert "gateway.port" in result.stderr


def test_non_loopback_without_api_keys_is_refused(tmp_path: Path) -> None:
    result = run_cli("serve", "--host", "0.0.0.0", cwd=tmp_path)
    assert result.returncode != 0
    assert "api_keys" in result.stderr


def test_serve_with_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [*IOGATE, "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)  # polling a subprocess: nothing to await
        assert health is not None, "gateway did not come up"
        assert health.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5).status_code == 200
        result = httpx.post(
            f"http://127.0.0.1:{port}/database/execute",
            json={"db_name": "main", "query": "SELECT 1 AS one"},
            timeout=5,
        )
        assert result.json()["data"] == [{"one": 1}]
        assert (tmp_path / "iogate.db").exists()
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}" in output


def test_workers_see_the_bind_address_given_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Host allow-list default depends on the bind address: a worker
    started by ``serve --host 0.0.0.0 --workers N`` must see that host, not
    the config file's."""
    from iogate.gateway.app import app_from_environment

    monkeypatch.setenv("IOGATE_CONFIG", "")
    monkeypatch.setenv("IOGATE_SERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("IOGATE_SERVE_PORT", "9123")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    gateway = app_from_environment().state.settings.gateway
    assert (gateway.host, gateway.port) == ("0.0.0.0", 9123)
    assert not gateway.is_loopback()
