"""Config errors as the operator meets them: real ``iogate`` processes.

Every invalid value is refused at load time by ``serve``, ``check`` and
``run`` alike: exit status 2, one line (no traceback) naming the key path,
and nothing announcing "serving". The same holds for a busy port and for a
non-loopback bind without keys, whose hint keeps its TOML brackets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

IOGATE = [sys.executable, "-m", "iogate.cli"]
PG = "postgresql://postgres@127.0.0.1:5432/test"

KEY = '[[gateway.api_keys]]\nname = "ci"\nkey = "k-123456789"\n'
SQLITE = '[databases.main]\ntype = "sqlite"\npath = "main.db"\n'
API = '[apis.crm]\nbase_url = "https://crm.example.com/v1"\n'

# (id, config text, what the one line must name)
CASES = [
    (
        "base_url_without_scheme",
        '[apis.crm]\nbase_url = "crm.example.com/v1"\n',
        ["apis.crm.base_url", "http://"],
    ),
    (
        "rate_limit_in_words",
        API + 'rate_limit = "fifty per sec"\n',
        ["apis.crm.rate_limit", "fifty per sec"],
    ),
    (
        "mangled_postgres_url",
        '[databases.pg]\ntype = "postgresql"\nurl = "postgres:/127.0.0.1/db"\n',
        ["databases.pg", "postgres://"],
    ),
    (
        "postgres_url_with_two_path_segments",
        '[databases.pg]\ntype = "postgresql"\nurl = "postgresql://u@h:5432/db/extra"\n',
        ["databases.pg", "one database name"],
    ),
    (
        "redis_url_with_a_word_for_a_database",
        '[databases.kv]\ntype = "redis"\nurl = "redis://127.0.0.1:6379/cache"\n',
        ["databases.kv", "database number"],
    ),
    (
        "scope_typo",
        SQLITE + KEY + 'scopes = ["db:main:reed"]\n',
        ["gateway.api_keys[0].scopes", "db:main:reed"],
    ),
    (
        "scope_for_an_unknown_database",
        SQLITE + KEY + 'scopes = ["db:main:read", "db:mian:write"]\n',
        ["gateway.api_keys[0].scopes[1]", "db:mian:write", "configured: main"],
    ),
    (
        "scope_for_an_unknown_api",
        API + KEY + 'scopes = ["api:crn"]\n',
        ["gateway.api_keys[0].scopes[0]", "api:crn", "configured: crm"],
    ),
    (
        "scope_for_an_unknown_operation",
        SQLITE + KEY + 'scopes = ["ops:get_usr"]\n'
        '[operations.get_user]\ndatabase = "main"\nquery = "SELECT 1"\n',
        ["gateway.api_keys[0].scopes[0]", "ops:get_usr", "configured: get_user"],
    ),
    (
        "mysql_url_option_the_driver_refuses",
        '[databases.m]\ntype = "mysql"\nurl = "mysql://root@127.0.0.1:3306/test?charst=utf8"\n',
        ["databases.m", "charst"],
    ),
    (
        "statement_timeout_on_a_redis_database",
        '[databases.kv]\ntype = "redis"\nurl = "redis://127.0.0.1:6379/0"\nstatement_timeout = 1\n',
        ['databases.kv.statement_timeout: not supported by type "redis"'],
    ),
    (
        "circuit_breaker_ratio_the_breaker_refuses",
        API + "circuit_breaker = { failure_ratio = 2 }\n",
        ["apis.crm.circuit_breaker", "failure_ratio must be in (0, 1]"],
    ),
    (
        "api_header_name_with_a_blank",
        API + 'headers = { "X Token" = "abc" }\n',
        ["apis.crm", "header name"],
    ),
]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IOGATE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        # Narrow terminal: a line that Rich wrapped would show up as two.
        env={**os.environ, "COLUMNS": "60"},
    )


def command(name: str, config: Path, tmp_path: Path) -> list[str]:
    if name == "run":
        batch = tmp_path / "batch.json"
        batch.write_text('[{"type": "database", "db_name": "main", "query": "SELECT 1"}]')
        return ["run", "--config", str(config), str(batch)]
    return [name, "--config", str(config)]


def assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert result.returncode == 2, output
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert "serving" not in output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# The cases go through every command; the others through serve alone
# (each process costs seconds; the three commands share one loader).
EVERY_COMMAND = {
    "base_url_without_scheme",
    "rate_limit_in_words",
    "mangled_postgres_url",
    "scope_typo",
    "scope_for_an_unknown_database",
    "mysql_url_option_the_driver_refuses",
}
RUNS = [
    pytest.param(name, text, expected, id=f"{case}-{name}")
    for case, text, expected in CASES
    for name in (["serve", "check", "run"] if case in EVERY_COMMAND else ["serve"])
]


@pytest.mark.parametrize(("name", "config_text", "expected"), RUNS)
def test_invalid_value_is_one_line_naming_the_key(
    tmp_path: Path, name: str, config_text: str, expected: list[str]
) -> None:
    config = tmp_path / "iogate.toml"
    config.write_text(f"[gateway]\nport = {free_port()}\n" + config_text)
    result = run_cli(*command(name, config, tmp_path), cwd=tmp_path)
    line = assert_one_line(result, *expected)
    assert line.startswith("config error: "), line
    assert str(config) in line  # which file


def test_scopes_naming_configured_resources_are_accepted(tmp_path: Path) -> None:
    """The check refuses only what names nothing: every valid form passes."""
    config = tmp_path / "iogate.toml"
    config.write_text(
        SQLITE
        + API
        + KEY
        + 'scopes = ["db:main:read", "db:main:write", "db:main:admin", "db:*:read", "api:crm",'
        ' "api:*", "ops:get_user", "ops:*", "batch", "jobs", "observe"]\n'
        '[operations.get_user]\ndatabase = "main"\nquery = "SELECT 1"\n'
    )
    batch = tmp_path / "batch.json"
    batch.write_text('[{"type": "database", "db_name": "main", "query": "SELECT 1 AS one"}]')
    result = run_cli("run", "--config", str(config), str(batch), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_busy_port_is_one_line_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli("serve", "--port", str(port), cwd=tmp_path)
    line = assert_one_line(result, f"127.0.0.1:{port}", "in use")
    assert line.startswith("cannot serve: "), line


def test_non_loopback_refusal_keeps_its_toml_hint(tmp_path: Path) -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()), cwd=tmp_path)
    line = assert_one_line(result, "0.0.0.0")
    # Rich markup used to swallow both: they are what the operator must type.
    assert "[gateway] api_keys" in line, line
    assert "[[gateway.api_keys]]" in line, line


def test_a_config_that_is_not_toml_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "iogate.toml"
    config.write_text("[gateway\nport = 1\n")
    for name in ("serve", "check", "run"):
        result = run_cli(*command(name, config, tmp_path), cwd=tmp_path)
        assert_one_line(result, str(config), "invalid TOML")


def test_help_keeps_toml_table_names_and_documents_signals(tmp_path: Path) -> None:
    result = run_cli("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "(overrides [gateway] host)" in text
    assert "[gateway] shutdown_timeout" in text
    assert "SIGHUP reloads the config file" in text
