"""``[databases.NAME]`` per type: a key either works on that backend or the file is refused.

Each refusal is one line naming the key's path and the type, as an
operator meets it (``load_settings`` / ``parse_settings`` on TOML text);
none is pydantic's per-variant noise.
"""

from __future__ import annotations

import pytest

from iogate.core.config import DatabaseOptions
from iogate.core.errors import ConfigError
from iogate.gateway.settings import (
    MemorySettings,
    PostgreSQLSettings,
    RedisSettings,
    SQLiteSettings,
    parse_settings,
)

PG = 'type = "postgresql"\nurl = "postgresql://postgres@127.0.0.1:5432/test"\n'
MYSQL = 'type = "mysql"\nurl = "mysql://root@127.0.0.1:3306/test"\n'
SQLITE = 'type = "sqlite"\npath = "main.db"\n'
REDIS = 'type = "redis"\nurl = "redis://127.0.0.1:6379/0"\n'
MEMORY = 'type = "memory"\n'


def refusal(table: str, name: str = "db") -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings(f"[databases.{name}]\n{table}", env={})
    return str(caught.value)


# -- the two defects of issue 15 ---------------------------------------------------


def test_read_only_on_memory_reaches_the_manager() -> None:
    # It used to load and be dropped: a `set` through POST /database/execute succeeded.
    text = "[databases.cache]\n" + MEMORY + "read_only = true\n"
    assert parse_settings(text, env={}).databases["cache"].manager_options() == {"read_only": True}


@pytest.mark.parametrize("pipelining", ["", "auto_pipeline = false\n"])
def test_acquire_timeout_on_redis_reaches_the_manager_options(pipelining: str) -> None:
    # It used to load and be dropped: the manager waited 5 s.
    text = "[databases.kv]\n" + REDIS + pipelining + "acquire_timeout = 0.1\nread_only = true\n"
    options = parse_settings(text, env={}).databases["kv"].manager_options()
    assert options["acquire_timeout"] == 0.1
    assert options["read_only"] is True


@pytest.mark.parametrize("pipelining", ["", "auto_pipeline = true\n"])
def test_redis_pool_size_is_refused_where_there_is_no_pool(pipelining: str) -> None:
    # auto_pipeline (the default) multiplexes one connection: there is no pool to size.
    assert refusal(REDIS + pipelining + "max_connections = 4\n") == (
        "databases.db.max_connections: applies only with auto_pipeline = false (with "
        "auto_pipeline, one multiplexed connection carries every command: there is no pool)"
    )


# -- what each type refuses ---------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "db_type", "takers"),
    [
        (MEMORY, "acquire_timeout = 1", "memory", "postgresql, sqlite, mysql, redis"),
        (MEMORY, "statement_timeout = 1", "memory", "postgresql, sqlite, mysql"),
        (MEMORY, "max_connections = 3", "memory", "postgresql, sqlite, mysql, redis"),
        (MEMORY, "min_connections = 1", "memory", "postgresql, mysql"),
        (MEMORY, "max_idle_time = 10", "memory", "postgresql, mysql"),
        (MEMORY, 'url = "redis://127.0.0.1:6379/0"', "memory", "postgresql, sqlite, mysql, redis"),
        (REDIS, "statement_timeout = 1", "redis", "postgresql, sqlite, mysql"),
        (REDIS, "min_connections = 1", "redis", "postgresql, mysql"),
        (REDIS, "max_lifetime = 60", "redis", "postgresql, mysql"),
        (REDIS, "busy_timeout = 1", "redis", "sqlite"),
        (SQLITE, "auto_pipeline = false", "sqlite", "redis"),
        (SQLITE, "min_connections = 1", "sqlite", "postgresql, mysql"),
        (SQLITE, "max_idle_time = 10", "sqlite", "postgresql, mysql"),
        (SQLITE, "max_lifetime = 60", "sqlite", "postgresql, mysql"),
        (SQLITE, "idle_check_interval = 0", "sqlite", "postgresql, mysql"),
        (SQLITE, "reset_session = true", "sqlite", "postgresql, mysql"),
        (SQLITE, 'read_url = "postgresql://h/db"', "sqlite", "postgresql, mysql"),
        (PG, "busy_timeout = 1", "postgresql", "sqlite"),
        (PG, 'synchronous = "FULL"', "postgresql", "sqlite"),
        (PG, 'path = "x.db"', "postgresql", "sqlite"),
        (PG, "auto_pipeline = true", "postgresql", "redis"),
        (MYSQL, 'path = "x.db"', "mysql", "sqlite"),
    ],
)
def test_a_key_the_type_cannot_honour_is_refused_naming_its_path(
    table: str, key: str, db_type: str, takers: str
) -> None:
    name = key.split(" = ")[0]
    assert refusal(f"{table}{key}\n") == (
        f'databases.db.{name}: not supported by type "{db_type}" (only by {takers})'
    )


def test_a_key_no_type_takes_is_still_an_unknown_key() -> None:
    assert refusal(MEMORY + "max_conections = 3\n") == "databases.db.max_conections: unknown key"


def test_the_type_is_reported_without_the_noise_of_each_model() -> None:
    assert refusal('type = "postgres"\nurl = "x"\n') == (
        "databases.db.type: must be one of postgresql, sqlite, mysql, redis, memory "
        "(got 'postgres')"
    )
    assert refusal('path = "x.db"\n') == (
        "databases.db.type: required key is missing "
        "(one of: postgresql, sqlite, mysql, redis, memory)"
    )
    # A bad value inside a type's table names the key, not the model pydantic picked.
    assert refusal(SQLITE + "busy_timeout = 0\n") == (
        "databases.db.busy_timeout: Input should be greater than 0 (got 0)"
    )
    assert refusal(REDIS + "auto_pipeline = false\nacquire_timeout = -1\n").startswith(
        "databases.db.acquire_timeout: Input should be greater than 0"
    )


def test_the_library_rules_refuse_at_load_time() -> None:
    # DatabaseOptions' own rule, met while the file loads, under the database's path.
    assert refusal(PG + "min_connections = 5\nmax_connections = 2\n") == (
        "databases.db: min_connections must be between 0 and max_connections (2), got 5"
    )


# -- what each type builds ------------------------------------------------------------


def test_every_type_answers_the_shared_questions() -> None:
    text = (
        f"[databases.pg]\n{PG}read_url = 'postgresql://reader@127.0.0.1:5432/test'\n"
        f"[databases.lite]\n{SQLITE}read_only = true\n"
        f"[databases.kv]\n{REDIS}allow_raw_sql = false\n"
        f"[databases.cache]\n{MEMORY}adaptive_concurrency = true\n"
    )
    dbs = parse_settings(text, env={}).databases
    assert isinstance(dbs["pg"], PostgreSQLSettings)
    assert isinstance(dbs["lite"], SQLiteSettings)
    assert isinstance(dbs["kv"], RedisSettings)
    assert isinstance(dbs["cache"], MemorySettings)
    assert [db.read_only for db in dbs.values()] == [False, True, False, False]
    assert [db.read_url is not None for db in dbs.values()] == [True, False, False, False]
    assert [db.path for db in dbs.values()] == [None, "main.db", None, None]
    assert [db.allow_raw_sql for db in dbs.values()] == [True, True, False, True]
    assert dbs["cache"].adaptive_concurrency is not None
    assert dbs["cache"].url is None
    assert dbs["cache"].connection_string() == ""
    assert dbs["cache"].manager_options() == {}
    assert dbs["kv"].connection_string() == "redis://127.0.0.1:6379/0"


def test_sql_settings_build_the_library_options() -> None:
    text = (
        f"[databases.lite]\n{SQLITE}busy_timeout = 2\nsynchronous = 'FULL'\nread_only = true\n"
        f"[databases.pg]\n{PG}min_connections = 0\nidle_check_interval = 0\nreset_session = true\n"
    )
    settings = parse_settings(text, env={})
    lite, pg = settings.databases["lite"], settings.databases["pg"]
    assert isinstance(lite, SQLiteSettings)
    assert isinstance(pg, PostgreSQLSettings)
    assert lite.options() == DatabaseOptions(
        max_connections=5, busy_timeout=2, synchronous="FULL", read_only=True
    )
    capped = pg.options(settings.gateway)
    assert capped.min_connections == 0
    assert capped.idle_check_interval == 0
    assert capped.reset_session is True
    assert (capped.max_rows, capped.max_result_bytes) == (1000, 16 * 1_048_576)


def test_redis_passes_only_what_it_honours() -> None:
    text = "[databases.kv]\n" + REDIS + "max_connections = 4\nauto_pipeline = false\n"
    assert parse_settings(text, env={}).databases["kv"].manager_options() == {
        "max_connections": 4,
        "auto_pipeline": False,
    }
    pipelined = "[databases.kv]\n" + REDIS + "auto_pipeline = true\n"
    assert parse_settings(pipelined, env={}).databases["kv"].manager_options() == {
        "auto_pipeline": True
    }
