"""Guarded SQL on SQLite: every statement class a non-admin key may not run.

One ``iogate serve`` process for the module, databases ``lite`` and
``lite_ro`` (``read_only = true``) on one file; see harness.py for the
invariant checked after every attack. SQLite's connections cannot be killed
from outside, so a failed check restarts the gateway (targets.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.harness import (
    Attack,
    first_of_each_class,
    params,
    per_class,
)
from tests.security.named_operations import NamedOperations, hostile_values
from tests.security.support import (
    ADMIN,
    READER,
    WRITER,
    keys_toml,
    new_prefix,
    serve,
)
from tests.security.target_sqlite import SQLiteTarget

W = True  # a data write: refused for readers and on read_only databases only

ATTACKS = [
    # transaction control
    Attack("transaction", "begin", "BEGIN"),
    Attack("transaction", "begin-immediate", "BEGIN IMMEDIATE"),
    Attack("transaction", "begin-exclusive", "BEGIN EXCLUSIVE TRANSACTION"),
    Attack("transaction", "commit", "COMMIT"),
    Attack("transaction", "end", "END TRANSACTION"),
    Attack("transaction", "rollback", "ROLLBACK"),
    Attack("transaction", "savepoint", "SAVEPOINT sp"),
    Attack("transaction", "release", "RELEASE sp"),
    Attack("transaction", "rollback-to", "ROLLBACK TO sp"),
    # PRAGMA (SQLite's session settings)
    Attack("pragma", "query-only-off", "PRAGMA query_only = OFF", names="PRAGMA"),
    Attack("pragma", "query-only-zero", "PRAGMA query_only=0", names="PRAGMA"),
    Attack("pragma", "foreign-keys", "PRAGMA foreign_keys = OFF"),
    Attack("pragma", "writable-schema", "PRAGMA writable_schema = ON"),
    Attack("pragma", "journal-mode", "PRAGMA journal_mode = DELETE"),
    Attack("pragma", "synchronous", "PRAGMA synchronous = OFF"),
    Attack("pragma", "user-version", "PRAGMA user_version = 7"),
    Attack("pragma", "application-id", "PRAGMA main.application_id = 7"),
    Attack("pragma", "busy-timeout", "PRAGMA busy_timeout = 0"),
    Attack("pragma", "table-info", "PRAGMA table_info({t})"),
    Attack("pragma", "wal-checkpoint", "PRAGMA wal_checkpoint(TRUNCATE)"),
    Attack("pragma", "recursive-triggers", "PRAGMA recursive_triggers = ON"),
    # ATTACH / DETACH
    Attack("attach", "attach-file", "ATTACH DATABASE '{file}' AS {attached}", names="ATTACH"),
    Attack("attach", "attach-short", "ATTACH '{file}' AS {attached}", names="ATTACH"),
    Attack("attach", "attach-memory", "ATTACH ':memory:' AS {attached}", names="ATTACH"),
    Attack("attach", "attach-uri", "ATTACH 'file:{file}?mode=rwc' AS {attached}"),
    Attack("attach", "attach-self", "ATTACH DATABASE '{db_path}' AS {attached}"),
    Attack("attach", "attach-expression", "ATTACH '{file}' || '' AS {attached}"),
    Attack("attach", "detach", "DETACH DATABASE {attached}"),
    Attack("attach", "detach-short", "DETACH {attached}"),
    # VACUUM and maintenance
    Attack("vacuum", "vacuum", "VACUUM", names="VACUUM"),
    Attack("vacuum", "vacuum-main", "VACUUM main"),
    Attack("vacuum", "vacuum-into", "VACUUM INTO '{file}'", names="VACUUM"),
    Attack("vacuum", "vacuum-main-into", "VACUUM main INTO '{file}'"),
    Attack("vacuum", "vacuum-into-uri", "VACUUM INTO 'file:{file}'"),
    Attack("vacuum", "analyze", "ANALYZE"),
    Attack("vacuum", "reindex", "REINDEX"),
    # DDL
    Attack("ddl", "create-table", "CREATE TABLE {prefix}_new (id INT)"),
    Attack("ddl", "create-table-as", "CREATE TABLE {prefix}_copy AS SELECT * FROM {t}"),
    Attack("ddl", "create-temp-table", "CREATE TEMP TABLE {t} (id INT, name TEXT, n INT)"),
    Attack("ddl", "create-temp-as", "CREATE TEMPORARY TABLE {t} AS SELECT 1 AS id"),
    Attack("ddl", "create-temp-view", "CREATE TEMP VIEW {t} AS SELECT 1 AS id"),
    Attack(
        "ddl",
        "create-temp-trigger",
        "CREATE TEMP TRIGGER {prefix}_tt AFTER INSERT ON {t} BEGIN DELETE FROM {t}; END",
    ),
    Attack("ddl", "drop", "DROP TABLE {t}", names="DROP"),
    Attack("ddl", "drop-if-exists", "DROP TABLE IF EXISTS {t}"),
    Attack("ddl", "alter-add-column", "ALTER TABLE {t} ADD COLUMN evil INT DEFAULT 1"),
    Attack("ddl", "alter-rename", "ALTER TABLE {t} RENAME TO {prefix}_renamed"),
    Attack("ddl", "create-index", "CREATE INDEX {prefix}_idx ON {t} (n)"),
    Attack("ddl", "create-view", "CREATE VIEW {prefix}_view AS SELECT * FROM {t}"),
    Attack(
        "ddl",
        "create-trigger",
        "CREATE TRIGGER {prefix}_trg AFTER INSERT ON {t} BEGIN DELETE FROM {t}; END",
    ),
    Attack("ddl", "create-virtual", "CREATE VIRTUAL TABLE {prefix}_fts USING fts5(x)"),
    Attack("ddl", "sequence-write", "DELETE FROM sqlite_sequence"),
    # several statements in one string
    Attack("stacked", "select-delete", "SELECT 1; DELETE FROM {t}"),
    Attack("stacked", "select-attach", "SELECT 1; ATTACH '{file}' AS {attached}"),
    Attack("stacked", "string-semicolon", "SELECT ';'; DELETE FROM {t}"),
    Attack("stacked", "line-comment", "SELECT 1 -- x\n; DELETE FROM {t}"),
    Attack("stacked", "block-comment", "SELECT 1 /* ; */; DELETE FROM {t}"),
    Attack("stacked", "commit-delete", "SELECT 1; COMMIT; DELETE FROM {t}"),
    Attack("stacked", "rollback-delete", "ROLLBACK; DELETE FROM {t}"),
    Attack("stacked", "quoted-identifier", 'SELECT 1 AS "a;b"; DELETE FROM {t}'),
    Attack("stacked", "two-selects", "SELECT 1; SELECT 2"),
    Attack("stacked", "select-pragma", "SELECT 1; PRAGMA query_only = OFF"),
    # functions with effects outside the statement
    Attack(
        "function",
        "load-extension",
        "SELECT load_extension('/nonexistent/evil')",
        names="load_extension",
    ),
    Attack("function", "load-extension-entry", "SELECT load_extension('{file}', 'sqlite3_init')"),
    Attack("function", "load-extension-upper", "SELECT LOAD_EXTENSION('/nonexistent/evil')"),
    Attack(
        "function",
        "load-extension-in-where",
        "SELECT id FROM {t} WHERE load_extension('/nonexistent/evil') IS NULL",
    ),
    Attack("function", "fts3-tokenizer", "SELECT fts3_tokenizer('simple')"),
    Attack(
        "function",
        "load-extension-in-insert",
        "INSERT INTO {t} (id, name) VALUES (98, load_extension('/nonexistent/evil'))",
    ),
    # data writes: a read key (or a read_only database) may not
    Attack("write", "insert", "INSERT INTO {t} (id, name, n) VALUES (100, 'evil', 0)", W),
    Attack(
        "write", "insert-or-replace", "INSERT OR REPLACE INTO {t} (id, name) VALUES (1, 'x')", W
    ),
    Attack("write", "replace", "REPLACE INTO {t} (id, name) VALUES (1, 'evil')", W),
    Attack("write", "update", "UPDATE {t} SET n = n + 1", W),
    Attack("write", "delete", "DELETE FROM {t}", W),
    Attack("write", "delete-returning", "DELETE FROM {t} RETURNING id", W),
    Attack(
        "write",
        "upsert",
        "INSERT INTO {t} (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = 'evil'",
        W,
    ),
    Attack("write", "cte-delete", "WITH x AS (SELECT 1 AS id) DELETE FROM {t} WHERE id IN x", W),
    Attack("write", "comment-then-delete", "/* SELECT */ DELETE FROM {t}", W),
    # One statement after an empty one: SQLite runs a plain DELETE.
    Attack("write", "leading-semicolon", "; DELETE FROM {t}", W),
]  # fmt: skip

REFUSED_FOR_ALL = [a for a in ATTACKS if not a.writes]
WRITES = [a for a in ATTACKS if a.writes]
IN_BATCHES = per_class(REFUSED_FOR_ALL, 3)
ON_READ_ONLY = [*per_class(REFUSED_FOR_ALL, 3), *WRITES]

# Lookalikes a guard built on string matching would refuse: a parser lets them through.
ALLOWED_READS = [
    "SELECT 1 AS one",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3) SELECT i FROM c",
    "VALUES (1, 'a')",
    "SELECT 'ATTACH; VACUUM INTO x; PRAGMA query_only = 0' AS text",
    "/* BEGIN; */ SELECT 1 AS one -- ; ROLLBACK",
    'SELECT 1 AS "load_extension"',
    "SELECT name FROM {t} WHERE name = 'o''neil; --'",
    "SELECT count(*) AS n FROM {t}",
    "SELECT value FROM json_each('[1, 2]')",
]


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteTarget]:
    workdir = tmp_path_factory.mktemp("lite-guard")
    target = SQLiteTarget(workdir, prefix=new_prefix())
    try:
        target.setup()
        config = keys_toml(["db:lite:read", "db:lite_ro:read", "batch"]) + target.config()
        with serve(workdir, config) as server:
            target.server = server
            target.capture_baselines()
            yield target
    finally:
        target.teardown()


def test_baseline_is_a_default_session(lite: SQLiteTarget) -> None:
    for db in (lite.db, lite.ro_db):
        assert lite.baselines[db]["temp_objects"] == 0
        assert lite.baselines[db]["data"] == lite.snapshot()["data"]


def test_the_invariant_can_fail(lite: SQLiteTarget) -> None:
    """The checks behind every test below see a changed row, a stray file
    and a changed session setting."""
    lite.assert_invariant_can_fail()


@pytest.mark.parametrize("attack", params(ATTACKS))
def test_reader_is_refused(lite: SQLiteTarget, attack: Attack) -> None:
    lite.direct(attack, key=READER, db=lite.db)


@pytest.mark.parametrize("attack", params(REFUSED_FOR_ALL))
def test_writer_is_refused(lite: SQLiteTarget, attack: Attack) -> None:
    lite.direct(attack, key=WRITER, db=lite.db)


@pytest.mark.parametrize("attack", params(ON_READ_ONLY))
def test_read_only_database_refuses_the_writer(lite: SQLiteTarget, attack: Attack) -> None:
    lite.direct(attack, key=WRITER, db=lite.ro_db)


@pytest.mark.parametrize("attack", params(IN_BATCHES))
def test_batch_refuses_the_operation(lite: SQLiteTarget, attack: Attack) -> None:
    lite.batch(attack, atomic=False)


@pytest.mark.parametrize("attack", params(IN_BATCHES))
def test_atomic_batch_is_rolled_back(lite: SQLiteTarget, attack: Attack) -> None:
    lite.batch(attack, atomic=True)


@pytest.mark.parametrize("attack", params(IN_BATCHES))
def test_transaction_step_is_rolled_back(lite: SQLiteTarget, attack: Attack) -> None:
    lite.transaction_step(attack)


@pytest.mark.parametrize("attack", params(WRITES))
def test_read_only_database_batch_refuses_writes(lite: SQLiteTarget, attack: Attack) -> None:
    lite.read_only_batch(attack)


@pytest.mark.parametrize("attack", params(first_of_each_class(ATTACKS)))
def test_reader_batch_needs_write_scope(lite: SQLiteTarget, attack: Attack) -> None:
    lite.reader_batch(attack)


@pytest.mark.parametrize("query", ALLOWED_READS)
def test_reader_may_run_data_reads(lite: SQLiteTarget, query: str) -> None:
    """The guard refuses by statement kind, not by the words in the text."""
    before = lite.snapshot()
    response = lite.gw.sql(lite.db, lite.render(query), key=READER)
    assert response.status_code == 200, response.text
    lite.check(before, lite.db)


def test_writer_may_run_data_writes(lite: SQLiteTarget) -> None:
    """Each data statement kind is allowed to the writer and committed."""
    a = lite.acks
    for sql in (
        f"INSERT INTO {a} (marker) VALUES ('w-insert')",
        f"UPDATE {a} SET marker = 'w-update' WHERE marker = 'w-insert'",
        f"REPLACE INTO {a} (id, marker) VALUES (1000000, 'w-replace')",
        f"INSERT INTO {a} (marker) VALUES ('w-returning') RETURNING id",
        f"DELETE FROM {a} WHERE marker = 'w-update'",
    ):
        response = lite.gw.sql(lite.db, sql, key=WRITER)
        assert response.status_code == 200, f"{sql}: {response.text}"
    assert lite.ack_count("w-replace") == 1
    assert lite.ack_count("w-returning") == 1
    assert lite.ack_count("w-update") == 0
    lite.check(lite.snapshot(), lite.db)


def test_admin_runs_sql_unguarded(lite: SQLiteTarget) -> None:
    before = lite.snapshot()
    response = lite.gw.sql(lite.db, f"PRAGMA table_info({lite.table})", key=ADMIN)
    assert response.status_code == 200, response.text
    lite.check(before, lite.db)


@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_find(lite: SQLiteTarget, value: str) -> None:
    NamedOperations(lite).find_matches_nothing(value)


@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_by_id(lite: SQLiteTarget, value: str) -> None:
    NamedOperations(lite).by_id_is_a_value(value)


@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_insert(lite: SQLiteTarget, value: str) -> None:
    NamedOperations(lite).note_stores_it_verbatim(value)


@pytest.mark.parametrize("atomic", [False, True], ids=["batch", "atomic-batch"])
@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_in_batch(lite: SQLiteTarget, value: str, atomic: bool) -> None:
    NamedOperations(lite).in_a_batch(value, atomic=atomic)


def test_named_operation_odd_parameters(lite: SQLiteTarget) -> None:
    NamedOperations(lite).odd_shapes()


def test_every_acknowledged_write_is_still_there(lite: SQLiteTarget) -> None:
    """Last in the module: every INSERT answered 200 above, read back raw."""
    lite.assert_acknowledged_writes_kept()
