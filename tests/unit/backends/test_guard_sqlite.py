"""SQLite's authorizer actions as verdicts, and the per-connection guard.

The mapping is pure; the guard is exercised on a real in-memory connection
(SQLite compiles the statements, nothing is faked).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from iogate.backends.sqlite import guard as guard_sqlite
from iogate.backends.sqlite.guard import (
    ConnectionGuard,
    GuardableConnection,
    classify,
    connection_guard,
    guarded_text,
)
from iogate.core.errors import ForbiddenStatementError, QueryError
from iogate.core.sqlguard import Access, Verdict

READ, WRITE = Access.READ, Access.WRITE


# -- classify: one action -----------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "arg1", "arg2"),
    [
        (sqlite3.SQLITE_SELECT, None, None),
        (sqlite3.SQLITE_RECURSIVE, None, None),
        (sqlite3.SQLITE_READ, "t", "v"),
        (sqlite3.SQLITE_READ, "sqlite_master", "sql"),
        (sqlite3.SQLITE_FUNCTION, None, "upper"),
        (sqlite3.SQLITE_FUNCTION, None, "json_extract"),
    ],
)
def test_reads_anyone_may_do(action: int, arg1: str | None, arg2: str | None) -> None:
    assert classify(action, arg1, arg2) is None


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        (sqlite3.SQLITE_INSERT, "INSERT"),
        (sqlite3.SQLITE_UPDATE, "UPDATE"),
        (sqlite3.SQLITE_DELETE, "DELETE"),
    ],
)
def test_data_writes_need_write_access(action: int, kind: str) -> None:
    assert classify(action, "t", None) == Verdict(kind, writes=True)


@pytest.mark.parametrize("table", ["sqlite_master", "sqlite_sequence", "SQLITE_STAT1"])
def test_writes_to_sqlites_own_tables_are_refused(table: str) -> None:
    verdict = classify(sqlite3.SQLITE_UPDATE, table, "seq")
    assert verdict is not None
    assert verdict.kind == f"UPDATE {table}"
    assert verdict.refusal is not None
    assert not verdict.writes


@pytest.mark.parametrize(
    ("action", "arg1", "arg2", "kind"),
    [
        (sqlite3.SQLITE_PRAGMA, "query_only", "0", "PRAGMA"),
        (sqlite3.SQLITE_PRAGMA, "writable_schema", "1", "PRAGMA"),
        (sqlite3.SQLITE_ATTACH, "/tmp/x.db", None, "ATTACH"),
        (sqlite3.SQLITE_DETACH, "x", None, "DETACH"),
        (sqlite3.SQLITE_TRANSACTION, "BEGIN", None, "BEGIN"),
        (sqlite3.SQLITE_TRANSACTION, "COMMIT", None, "COMMIT"),
        (sqlite3.SQLITE_TRANSACTION, "ROLLBACK", None, "ROLLBACK"),
        (sqlite3.SQLITE_SAVEPOINT, "BEGIN", "s", "SAVEPOINT"),
        (sqlite3.SQLITE_SAVEPOINT, "RELEASE", "s", "RELEASE"),
        (sqlite3.SQLITE_SAVEPOINT, "ROLLBACK", "s", "ROLLBACK TO"),
        (sqlite3.SQLITE_CREATE_TABLE, "n", None, "CREATE TABLE"),
        (sqlite3.SQLITE_CREATE_TEMP_TABLE, "n", None, "CREATE TEMP TABLE"),
        (sqlite3.SQLITE_CREATE_VIEW, "w", None, "CREATE VIEW"),
        (sqlite3.SQLITE_CREATE_TRIGGER, "tr", "t", "CREATE TRIGGER"),
        (sqlite3.SQLITE_CREATE_INDEX, "i", "t", "CREATE INDEX"),
        (sqlite3.SQLITE_CREATE_VTABLE, "f", "fts5", "CREATE VIRTUAL TABLE"),
        (sqlite3.SQLITE_DROP_TABLE, "t", None, "DROP TABLE"),
        (sqlite3.SQLITE_DROP_VIEW, "w", None, "DROP VIEW"),
        (sqlite3.SQLITE_ALTER_TABLE, "main", "t", "ALTER TABLE"),
        (sqlite3.SQLITE_REINDEX, "i", None, "REINDEX"),
        (sqlite3.SQLITE_ANALYZE, "t", None, "ANALYZE"),
        (sqlite3.SQLITE_FUNCTION, None, "load_extension", "function load_extension"),
        (sqlite3.SQLITE_FUNCTION, None, "FTS3_TOKENIZER", "function FTS3_TOKENIZER"),
        (sqlite3.SQLITE_READ, "sqlite_stmt", "sql", "SELECT FROM sqlite_stmt"),
        (12345, None, None, "authorizer action 12345"),
    ],
)
def test_everything_else_is_refused_for_every_key(
    action: int, arg1: str | None, arg2: str | None, kind: str
) -> None:
    verdict = classify(action, arg1, arg2)
    assert verdict is not None
    assert verdict.kind == kind
    assert verdict.refusal is not None
    assert "db:NAME:admin" in verdict.refusal


# -- the guard on a real connection --------------------------------------------------


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None, factory=GuardableConnection)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE seq (id INTEGER PRIMARY KEY AUTOINCREMENT)")
    conn.execute("INSERT INTO t VALUES (1, 'a')")
    try:
        yield conn
    finally:
        conn.close()


def run(conn: sqlite3.Connection, query: str, access: Access) -> list[Any]:
    """What iogate.backends.sqlite does around a guarded statement."""
    guard = connection_guard(conn)
    text = guarded_text(query, access)
    guard.enter(access)
    try:
        rows = conn.execute(text).fetchall()
        guard.ran(conn, text)
    except sqlite3.Error as exc:
        refusal = guard.refusal(conn, text, exc)
        if refusal is None:
            raise
        raise refusal from exc
    finally:
        guard.leave()
    return rows


def refusal_kind(conn: sqlite3.Connection, query: str, access: Access) -> str:
    with pytest.raises(ForbiddenStatementError) as info:
        run(conn, query, access)
    return info.value.kind


@pytest.mark.parametrize("access", [READ, WRITE])
@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("PRAGMA query_only = 0", "PRAGMA"),
        ("ATTACH ':memory:' AS x", "ATTACH"),
        ("BEGIN", "BEGIN"),
        ("END", "COMMIT"),
        ("SAVEPOINT s", "SAVEPOINT"),
        # Each of these first writes sqlite_master; the refusal is still named
        # after the statement.
        ("CREATE TABLE n (a)", "CREATE TABLE"),
        ("CREATE TEMP TABLE n (a)", "CREATE TEMP TABLE"),
        ("CREATE INDEX i ON t (v)", "CREATE INDEX"),
        ("CREATE VIEW w AS SELECT 1", "CREATE VIEW"),
        ("DROP TABLE t", "DROP TABLE"),
        ("ANALYZE", "ANALYZE"),
        ("ALTER TABLE t ADD COLUMN c", "ALTER TABLE"),
        ("VACUUM", "VACUUM"),
        ("SELECT load_extension('x')", "function load_extension"),
        ("SELECT 1; DELETE FROM t", "multiple statements"),
        ("DELETE FROM sqlite_sequence", "DELETE FROM sqlite_sequence"),
    ],
)
def test_refusals_name_the_statement(
    conn: sqlite3.Connection, access: Access, query: str, kind: str
) -> None:
    assert refusal_kind(conn, query, access) == kind
    assert run(conn, "SELECT count(*) FROM t", access) == [(1,)]
    schema = conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
    assert schema == [("seq",), ("sqlite_sequence",), ("t",)]


def test_a_read_key_may_not_write(conn: sqlite3.Connection) -> None:
    with pytest.raises(ForbiddenStatementError, match=r"db:NAME:write") as info:
        run(conn, "WITH x AS (SELECT 2) INSERT INTO t (id) SELECT * FROM x", READ)
    assert info.value.kind == "INSERT"
    assert run(conn, "INSERT INTO t (id, v) VALUES (2, 'b')", WRITE) == []
    assert conn.execute("SELECT count(*) FROM t").fetchall() == [(2,)]


def test_trusted_statements_are_not_checked(conn: sqlite3.Connection) -> None:
    guard = connection_guard(conn)
    assert guard.access is None
    conn.execute("CREATE TABLE later (a)")
    conn.execute("PRAGMA user_version = 2")
    assert conn.execute("PRAGMA user_version").fetchall() == [(2,)]


def test_ordinary_errors_are_not_refusals(conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        run(conn, "SELECT * FROM nowhere", READ)
    with pytest.raises(sqlite3.IntegrityError):
        run(conn, "INSERT INTO t (id) VALUES (1)", WRITE)


def test_a_statement_compiled_for_trusted_code_is_not_reused(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA user_version").fetchall()  # cached for trusted code
    assert refusal_kind(conn, "PRAGMA user_version", READ) == "PRAGMA"
    run(conn, "INSERT INTO t (id) VALUES (5)", WRITE)  # cached for a write key
    assert refusal_kind(conn, "INSERT INTO t (id) VALUES (5)", READ) == "INSERT"


def test_eponymous_tables_work_on_a_fresh_connection() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None, factory=GuardableConnection)
    try:
        assert run(conn, "SELECT value FROM json_each('[1, 2]')", READ) == [(1,), (2,)]
    finally:
        conn.close()


def test_guarded_text_is_the_same_statement_under_another_cache_key() -> None:
    read, write = guarded_text("SELECT 1", READ), guarded_text("SELECT 1", WRITE)
    assert len({read, write, "SELECT 1"}) == 3
    conn = sqlite3.connect(":memory:")
    try:
        cursor = conn.execute(read)
        assert [column[0] for column in cursor.description] == ["1"]
        assert cursor.fetchall() == [(1,)]
    finally:
        conn.close()


def test_the_guard_needs_a_guardable_connection() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        with pytest.raises(TypeError):
            connection_guard(conn)
    finally:
        conn.close()


def test_one_guard_per_connection(conn: sqlite3.Connection) -> None:
    guard = connection_guard(conn)
    assert isinstance(guard, ConnectionGuard)
    assert connection_guard(conn) is guard
    assert "trusted" in repr(guard)


@pytest.mark.parametrize("access", [READ, WRITE])
@pytest.mark.parametrize("query", ["REINDEX", "DROP TABLE IF EXISTS missing", "REINDEX nocase"])
def test_statements_sqlite_reports_nothing_of_are_refused(
    conn: sqlite3.Connection, access: Access, query: str
) -> None:
    for _ in range(2):  # compiled, then from the statement cache
        assert refusal_kind(conn, query, access) == "statement"


@pytest.mark.parametrize("query", ["", "-- nothing", ";"])
def test_an_empty_text_is_a_query_error(conn: sqlite3.Connection, query: str) -> None:
    with pytest.raises(QueryError, match="empty"):
        run(conn, query, READ)


def test_the_record_of_data_statements_starts_over(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard_sqlite, "_KNOWN_TEXTS", 4)
    queries = [f"SELECT {i} AS n" for i in range(10)]
    for _ in range(3):  # the cache keeps all ten; the record only four
        for i, query in enumerate(queries):
            assert run(conn, query, READ) == [(i,)]
    assert refusal_kind(conn, "REINDEX", READ) == "statement"
