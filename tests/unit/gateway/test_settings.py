"""Config loading: interpolation, strict keys, error paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from iogate.core.errors import ConfigError
from iogate.gateway.settings import DEFAULT_CONFIG, load_settings, parse_settings

FULL = """
[gateway]
host = "127.0.0.1"
port = 8080
max_rows = 100

[[gateway.api_keys]]
name = "ci"
key = "${IOGATE_CI_KEY}"
scopes = ["db:main_db:read", "batch"]

[databases.main_db]
type = "postgresql"
url = "postgresql://postgres@127.0.0.1:5432/${DB:-test}"
max_connections = 20
statement_timeout = 5

[databases.cache]
type = "redis"
url = "redis://127.0.0.1:6379/0"

[apis.external_api]
base_url = "https://api.example.com/v1"
headers = { Authorization = "Bearer ${EXTERNAL_TOKEN}" }
retry = { attempts = 3, backoff_initial = 0.1, backoff_max = 2.0 }
circuit_breaker = { failure_threshold = 5, recovery_timeout = 5 }
rate_limit = "100/second"

[operations.get_user]
database = "main_db"
query = "SELECT * FROM users WHERE id = $1"
params = ["id"]
cache = { database = "cache", ttl = 300 }
"""


def test_design_example_parses_with_interpolation() -> None:
    settings = parse_settings(FULL, env={"IOGATE_CI_KEY": "k", "EXTERNAL_TOKEN": "t"})
    assert settings.gateway.api_keys[0].key == "k"
    assert settings.databases["main_db"].url == "postgresql://postgres@127.0.0.1:5432/test"
    assert settings.apis["external_api"].headers == {"Authorization": "Bearer t"}
    assert settings.operations["get_user"].params == ["id"]
    assert settings.databases["main_db"].manager_options()["statement_timeout"] == 5


def test_default_applies_when_variable_is_empty_or_unset() -> None:
    env = {"IOGATE_CI_KEY": "k", "EXTERNAL_TOKEN": "t", "DB": ""}
    assert parse_settings(FULL, env=env).databases["main_db"].url.endswith("/test")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[databases.main]\ntype = "sqlite"\npath = "x"\nmax_conections = 3\n',
            "databases.main.max_conections: unknown key",
        ),
        (
            '[databases.main]\ntype = "sqlite"\npath = "x"\nmax_connections = "many"\n',
            "databases.main.max_connections",
        ),
        ('[databases.main]\ntype = "postgres"\nurl = "x"\n', "databases.main.type"),
        ('[databases.main]\ntype = "postgresql"\n', "a postgresql database needs url"),
        ("[gateway]\nprot = 1\n", "gateway.prot: unknown key"),
        (
            '[databases.main]\ntype = "postgresql"\nurl = "${MISSING_VAR}"\n',
            "databases.main.url: environment variable MISSING_VAR is not set",
        ),
        ('[operations.x]\ndatabase = "nope"\nquery = "SELECT 1"\n', "unknown database 'nope'"),
        ("not toml [", "invalid TOML"),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("$", r"\$").replace("{", r"\{")):
        parse_settings(text, env={})


def test_embedded_default_and_missing_file(tmp_path: Path) -> None:
    default = load_settings(None, env={})
    assert default.databases["main"].type == "sqlite"
    assert default.databases["main"].path == "iogate.db"
    assert default.gateway.is_loopback()
    assert "[databases.main]" in DEFAULT_CONFIG
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml", env={})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:sekrit@[bad/db", "databases.x: url is not a valid URL"),
        ("postgresql://u:sekrit@host:99999/db", "databases.x: url is not a valid URL"),
        ("mysql://u:sekrit@host/db", "url scheme must be one of postgresql://, postgres://"),
    ],
)
def test_database_urls_are_checked_without_echoing_them(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(f'[databases.x]\ntype = "postgresql"\nurl = "{url}"\n')
    assert message in str(caught.value)
    assert "sekrit" not in str(caught.value)
