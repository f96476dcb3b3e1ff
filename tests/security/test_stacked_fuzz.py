"""Hypothesis: stacked strings of statement fragments, sent with the reader key.

Whatever the string (several statements, transaction control between them,
comments and quotes that may or may not close, versioned comments), the
reader never changes the real table, never leaves anything on the pooled
session, and never gets a 5xx. One ``iogate serve`` process serves the three
backends (MariaDB only when a server answers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MYSQL_URL, port_open
from tests.security.harness import Target
from tests.security.support import READER, keys_toml, new_prefix, serve, server_writable_dir
from tests.security.target_mariadb import MariaDBTarget
from tests.security.target_postgres import PostgresTarget
from tests.security.target_sqlite import SQLiteTarget

COMMON = [
    "SELECT 1",
    "SELECT * FROM {t}",
    "SELECT name FROM {t} WHERE id = 1",
    "INSERT INTO {t} (id, name) VALUES (500, 'fz')",
    "DELETE FROM {t}",
    "UPDATE {t} SET n = 0",
    "DROP TABLE {t}",
    "ROLLBACK",
    "COMMIT",
    "BEGIN",
    "END",
    "SAVEPOINT s",
    "--",
    "/*",
    "*/",
    "/* x */",
    "'",
    '"',
    "(",
    ")",
    ",",
    "1",
]
FRAGMENTS = {
    "postgresql": [
        *COMMON,
        "ABORT",
        "START TRANSACTION READ WRITE",
        "SET statement_timeout = 1",
        "SET search_path = pg_temp",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET transaction_read_only = off",
        "RESET ALL",
        "SELECT set_config('statement_timeout', '1', false)",
        "CREATE TEMP TABLE {t} (id int)",
        "TRUNCATE {t}",
        "SELECT lo_creat(-1)",
        "SELECT pg_advisory_lock({lock})",
        "PREPARE fz AS DELETE FROM {t}",
        "EXECUTE fz",
        "LISTEN fz",
        "DO $$ BEGIN DELETE FROM {t}; END $$",
        "COPY {t} TO '{file}'",
        "$$",
        "E'\\'",
    ],
    "mysql": [
        *COMMON,
        "START TRANSACTION",
        "SET autocommit = 0",
        "SET sql_select_limit = 1",
        "SET SESSION TRANSACTION READ WRITE",
        "SET STATEMENT max_statement_time = 0 FOR",
        "/*!",
        "/*!50000 ",
        "/*M!100000 ",
        "#",
        "\\'",
        "`",
        "LOCK TABLES {t} WRITE",
        "UNLOCK TABLES",
        "SELECT GET_LOCK('{lockname}', 0)",
        "HANDLER {t} OPEN",
        "CREATE TEMPORARY TABLE {t} (id INT)",
        "SELECT * FROM {t} INTO OUTFILE '{file}'",
        "SET @evil = 1",
    ],
    "sqlite": [
        *COMMON,
        "BEGIN IMMEDIATE",
        "PRAGMA query_only = 0",
        "PRAGMA user_version = 9",
        "ATTACH '{file}' AS {attached}",
        "DETACH {attached}",
        "VACUUM INTO '{file}'",
        "CREATE TEMP TABLE {t} (id)",
        "CREATE TEMP VIEW {t} AS SELECT 1 AS id",
        "SELECT load_extension('/nonexistent/evil')",
    ],
}
SEPARATORS = [";", "; ", " ", "\n", ";\n", "", " -- \n", " /* ; */ "]


def stacked(dialect: str) -> st.SearchStrategy[str]:
    piece = st.tuples(st.sampled_from(FRAGMENTS[dialect]), st.sampled_from(SEPARATORS))
    return st.lists(piece, min_size=1, max_size=7).map(
        lambda pieces: "".join(fragment + separator for fragment, separator in pieces)
    )


FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def targets(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Target]]:
    workdir = tmp_path_factory.mktemp("fuzz")
    found: dict[str, Target] = {}
    with contextlib.ExitStack() as cleanup:
        pg = PostgresTarget(postgres_url, prefix=new_prefix(), files=server_writable_dir())
        cleanup.callback(pg.teardown)
        lite = SQLiteTarget(workdir, prefix=new_prefix())
        cleanup.callback(lite.teardown)
        found = {"postgresql": pg, "sqlite": lite}
        if port_open(MYSQL_URL, 3306):
            maria = MariaDBTarget(MYSQL_URL, prefix=new_prefix(), files=server_writable_dir())
            cleanup.callback(maria.teardown)
            found["mysql"] = maria
        for target in found.values():
            target.setup()
        scopes = [f"db:{t.db}:read" for t in found.values()]
        config = keys_toml(scopes) + "".join(t.config() for t in found.values())
        server = cleanup.enter_context(serve(workdir, config))
        for target in found.values():
            target.server = server
            target.capture_baselines()
        yield found


def send_as_reader(target: Target, text: str) -> None:
    before = target.fresh_snapshot()
    response = target.gw.sql(target.db, target.render(text), key=READER)
    with target.repaired_on_failure(before):
        assert response.status_code in (200, 400, 403, 422), response.text
        body = response.json()
        assert body["success"] is (response.status_code == 200), body
        if response.status_code == 403:
            assert body["error_type"] in ("forbidden_statement", "read_only"), body
        target.check(before, target.db)


@given(text=stacked("postgresql"))
@FUZZ
def test_postgres_stacked_strings(targets: dict[str, Target], text: str) -> None:
    send_as_reader(targets["postgresql"], text)


@given(text=stacked("sqlite"))
@FUZZ
def test_sqlite_stacked_strings(targets: dict[str, Target], text: str) -> None:
    send_as_reader(targets["sqlite"], text)


@given(text=stacked("mysql"))
@FUZZ
def test_mariadb_stacked_strings(mysql_url: str, targets: dict[str, Target], text: str) -> None:
    send_as_reader(targets["mysql"], text)
