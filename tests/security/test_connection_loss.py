"""A guarded request whose backend connection is killed mid-statement.

The answer is 503 ``connection_error`` (with Retry-After) for a read, and for
a write either that or 502 ``unknown_outcome`` (it may have been applied) --
never 500, never 400 ``query_error``; the write was not applied (the server
rolled it back with the connection); and the next request succeeds. One
``iogate serve`` process, a PostgreSQL and a MariaDB database with one
pooled connection each and a statement timeout well past the sleep.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MYSQL_URL, port_open
from tests.security.support import (
    READER,
    WRITER,
    Gateway,
    RawMariaDB,
    RawPostgres,
    keys_toml,
    serve,
    wait_for,
)

SLEEP = 5  # seconds the statement would run; the kill comes long before
FIND_TIMEOUT = 4  # seconds to see the statement running on the server


class Setup:
    def __init__(self, gateway: Gateway, pg: RawPostgres, maria: RawMariaDB | None) -> None:
        self.gateway = gateway
        self.pg = pg
        self.maria = maria
        self.table = f"sec{uuid.uuid4().hex[:8]}_loss"


def _config(postgres_url: str, maria: bool) -> str:
    config = f"""
[databases.pg]
type = "postgresql"
url = "{postgres_url}"
min_connections = 1
max_connections = 1
statement_timeout = 30
acquire_timeout = 10
"""
    if maria:
        config += f"""
[databases.maria]
type = "mysql"
url = "{MYSQL_URL}"
min_connections = 1
max_connections = 1
statement_timeout = 30
acquire_timeout = 10
"""
    return config


@pytest.fixture(scope="module")
def setup(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    pg = RawPostgres(postgres_url)
    maria = RawMariaDB(MYSQL_URL) if port_open(MYSQL_URL, 3306) else None
    workdir: Path = tmp_path_factory.mktemp("connection-loss")
    # A scope may only name a configured database (a config error otherwise).
    scopes = ["db:pg:read"] + (["db:maria:read"] if maria is not None else [])
    try:
        with serve(workdir, keys_toml(scopes) + _config(postgres_url, maria is not None)) as srv:
            state = Setup(srv.gateway, pg, maria)
            pg.execute(f"CREATE TABLE {state.table} (marker text)")
            if maria is not None:
                maria.execute(f"CREATE TABLE {state.table} (marker VARCHAR(100)) ENGINE=InnoDB")
            try:
                yield state
            finally:
                pg.execute(f"DROP TABLE IF EXISTS {state.table}")
                if maria is not None:
                    maria.execute(f"DROP TABLE IF EXISTS {state.table}")
    finally:
        pg.close()
        if maria is not None:
            maria.close()


def killed_mid_statement(
    send: Callable[[], httpx.Response], find: Callable[[], Any], kill: Callable[[Any], None]
) -> httpx.Response:
    """Send in a thread; once the server runs the statement, kill its connection."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(send)
        try:
            victim = wait_for(find, timeout=FIND_TIMEOUT, what="the statement to run")
        except AssertionError:
            pending.result(timeout=SLEEP + 10)
            raise
        kill(victim)
        return pending.result(timeout=SLEEP + 10)


def assert_connection_lost(response: httpx.Response, *, write: bool) -> None:
    allowed = (
        {503: "connection_error", 502: "unknown_outcome"} if write else {503: "connection_error"}
    )
    assert response.status_code in allowed, f"{response.status_code} {response.text}"
    body = response.json()
    assert body["success"] is False
    assert body["error_type"] == allowed[response.status_code], body
    if response.status_code == 503:
        assert int(response.headers["Retry-After"]) >= 1


def pg_find(setup: Setup, marker: str) -> Callable[[], Any]:
    return lambda: setup.pg.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE $1 AND pid <> pg_backend_pid() "
        "AND state = 'active'",
        f"%{marker}%",
    )


def pg_kill(setup: Setup) -> Callable[[Any], None]:
    return lambda pid: setup.pg.execute("SELECT pg_terminate_backend($1)", pid)


def maria_find(setup: Setup, marker: str) -> Callable[[], Any]:
    assert setup.maria is not None
    raw = setup.maria
    return lambda: raw.fetchval(
        "SELECT id FROM information_schema.processlist"
        " WHERE info LIKE %s AND id <> CONNECTION_ID()",
        (f"%{marker}%",),
    )


def maria_kill(setup: Setup) -> Callable[[Any], None]:
    assert setup.maria is not None
    raw = setup.maria
    return lambda thread: raw.execute(f"KILL CONNECTION {int(thread)}")


def recovers(setup: Setup, db: str) -> None:
    """The very next requests, by either key, succeed on a fresh connection."""
    for key in (READER, WRITER):
        response = setup.gateway.sql(db, "SELECT 2 AS two", key=key)
        assert response.status_code == 200, response.text
        assert response.json()["data"] == [{"two": 2}]


def test_postgres_read_killed_mid_statement(setup: Setup) -> None:
    marker = uuid.uuid4().hex
    query = f"SELECT pg_sleep({SLEEP}) AS slept, '{marker}' AS marker"
    response = killed_mid_statement(
        lambda: setup.gateway.sql("pg", query, key=READER),
        pg_find(setup, marker),
        pg_kill(setup),
    )
    assert_connection_lost(response, write=False)
    recovers(setup, "pg")


def test_postgres_write_killed_mid_statement(setup: Setup) -> None:
    marker = uuid.uuid4().hex
    query = f"INSERT INTO {setup.table} (marker) SELECT '{marker}' FROM pg_sleep({SLEEP})"
    response = killed_mid_statement(
        lambda: setup.gateway.sql("pg", query, key=WRITER),
        pg_find(setup, marker),
        pg_kill(setup),
    )
    assert_connection_lost(response, write=True)
    count = setup.pg.fetchval(f"SELECT count(*) FROM {setup.table} WHERE marker = $1", marker)
    assert count == 0, "a write killed before its COMMIT was applied"
    recovers(setup, "pg")


def test_postgres_transaction_step_killed(setup: Setup) -> None:
    """Inside a batch's transaction step: that operation fails alone, as a
    connection loss, and nothing of the transaction is committed."""
    marker = uuid.uuid4().hex
    step = {
        "type": "transaction",
        "db_name": "pg",
        "queries": [
            {"query": f"INSERT INTO {setup.table} (marker) VALUES ('{marker}-first')"},
            {"query": f"SELECT pg_sleep({SLEEP}) AS slept, '{marker}' AS marker"},
        ],
    }
    response = killed_mid_statement(
        lambda: setup.gateway.batch([step], key=WRITER),
        pg_find(setup, marker),
        pg_kill(setup),
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["success"] is False
    assert result["error_type"] in ("connection_error", "unknown_outcome"), result
    count = setup.pg.fetchval(
        f"SELECT count(*) FROM {setup.table} WHERE marker LIKE $1", marker + "%"
    )
    assert count == 0
    recovers(setup, "pg")


def test_mariadb_read_killed_mid_statement(mysql_url: str, setup: Setup) -> None:
    marker = uuid.uuid4().hex
    query = f"SELECT SLEEP({SLEEP}) AS slept, '{marker}' AS marker"
    response = killed_mid_statement(
        lambda: setup.gateway.sql("maria", query, key=READER),
        maria_find(setup, marker),
        maria_kill(setup),
    )
    assert_connection_lost(response, write=False)
    recovers(setup, "maria")


def test_mariadb_write_killed_mid_statement(mysql_url: str, setup: Setup) -> None:
    assert setup.maria is not None
    marker = uuid.uuid4().hex
    query = f"INSERT INTO {setup.table} (marker) SELECT CONCAT('{marker}', SLEEP({SLEEP}))"
    response = killed_mid_statement(
        lambda: setup.gateway.sql("maria", query, key=WRITER),
        maria_find(setup, marker),
        maria_kill(setup),
    )
    assert_connection_lost(response, write=True)
    count = setup.maria.fetchval(
        f"SELECT COUNT(*) FROM {setup.table} WHERE marker LIKE %s", (marker + "%",)
    )
    assert count == 0, "a write killed before its COMMIT was applied"
    recovers(setup, "maria")
