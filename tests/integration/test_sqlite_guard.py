"""Guarded SQL on real SQLite files: what a read or write key may run.

Every refused statement is also checked for what it would have done: the
table and the schema are unchanged afterwards, no file appears, the reader
is still ``query_only``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from iogate import AsyncSQLiteManager, Deadline
from iogate.core.result import Result
from iogate.core.sqlguard import Access

READ, WRITE = Access.READ, Access.WRITE
BOTH = pytest.mark.parametrize("access", [READ, WRITE], ids=["read", "write"])
ROWS = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 3, "v": "c"}]


async def _setup(manager: AsyncSQLiteManager) -> None:
    for statement in (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        "CREATE INDEX t_v ON t (v)",
        "CREATE TABLE seq (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)",
        "INSERT INTO seq (v) VALUES ('s')",
        "INSERT INTO t (id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    ):
        result = await manager.execute_query(statement)
        assert result.success, result.error


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[AsyncSQLiteManager]:
    manager = AsyncSQLiteManager(str(tmp_path / "guard.db"), max_connections=5)
    await manager.initialize_pool()
    try:
        await _setup(manager)
        yield manager
    finally:
        await manager.close()


@pytest.fixture
async def one_reader(tmp_path: Path) -> AsyncIterator[AsyncSQLiteManager]:
    """One writer and one reader: every read lands on the same connection."""
    manager = AsyncSQLiteManager(str(tmp_path / "guard1.db"), max_connections=2)
    await manager.initialize_pool()
    try:
        await _setup(manager)
        yield manager
    finally:
        await manager.close()


async def state(manager: AsyncSQLiteManager) -> tuple[Any, Any, Any]:
    """What a refused statement must leave as it was (read as trusted code)."""
    rows = await manager.execute_query("SELECT id, v FROM t ORDER BY id")
    schema = await manager.execute_query("SELECT type, name, sql FROM sqlite_master ORDER BY name")
    seq = await manager.execute_query("SELECT name, seq FROM sqlite_sequence")
    assert rows.success
    assert schema.success
    assert seq.success
    return rows.data, schema.data, seq.data


def assert_forbidden(result: Result, kind: str) -> None:
    assert result.error_type == "forbidden_statement", (result.error_type, result.error)
    assert kind in (result.error or ""), result.error
    assert not result.success


# -- data statements -------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    ("query", "params", "expected"),
    [
        ("SELECT v FROM t WHERE id = ?", [2], [{"v": "b"}]),
        ("select count(*) AS n from t", None, [{"n": 3}]),
        ("WITH x AS (SELECT id FROM t WHERE id > 1) SELECT count(*) AS n FROM x", None, [{"n": 2}]),
        (
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3) "
            "SELECT n FROM c",
            None,
            [{"n": 1}, {"n": 2}, {"n": 3}],
        ),
        ("VALUES (1, 2)", None, [{"column1": 1, "column2": 2}]),
        ("SELECT value FROM json_each(?)", ["[7, 8]"], [{"value": 7}, {"value": 8}]),
        ("/* a comment */ SELECT upper(v) AS u FROM t WHERE id = 1 -- and one", None, [{"u": "A"}]),
        ("SELECT name FROM sqlite_master WHERE name = 't'", None, [{"name": "t"}]),
    ],
)
async def test_reads_are_allowed(
    manager: AsyncSQLiteManager, access: Access, query: str, params: Any, expected: Any
) -> None:
    result = await manager.execute_query(query, params, guard=access)
    assert result.success, result.error
    assert result.data == expected
    assert result.rows_affected is None


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("INSERT INTO t (v) VALUES ('x')", "INSERT"),
        ("UPDATE t SET v = 'x'", "UPDATE"),
        ("DELETE FROM t", "DELETE"),
        ("REPLACE INTO t (id, v) VALUES (1, 'x')", "INSERT"),
        ("INSERT INTO t (id, v) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET v = 'y'", "INSERT"),
        ("WITH x AS (SELECT 1) INSERT INTO t (v) SELECT 'cte' FROM x", "INSERT"),
        ("WITH x AS (SELECT 1) DELETE FROM t WHERE id IN (SELECT * FROM x)", "DELETE"),
        ("INSERT INTO t (v) VALUES ('x') RETURNING id", "INSERT"),
    ],
)
async def test_a_read_key_cannot_write(manager: AsyncSQLiteManager, query: str, kind: str) -> None:
    before = await state(manager)
    result = await manager.execute_query(query, guard=READ)
    assert_forbidden(result, kind)
    assert "db:NAME:write" in (result.error or "")
    assert await state(manager) == before


@pytest.mark.parametrize(
    ("query", "affected", "rows"),
    [
        ("INSERT INTO t (id, v) VALUES (4, 'd')", 1, [*ROWS, {"id": 4, "v": "d"}]),
        (
            "UPDATE t SET v = 'z' WHERE id > 1",
            2,
            [ROWS[0], {"id": 2, "v": "z"}, {"id": 3, "v": "z"}],
        ),
        ("DELETE FROM t WHERE id = 1", 1, ROWS[1:]),
        # Python's sqlite3 counts rows only for statements starting INSERT/UPDATE/...
        (
            "WITH x AS (SELECT 4 AS id) INSERT INTO t (id, v) SELECT id, 'w' FROM x",
            None,
            [*ROWS, {"id": 4, "v": "w"}],
        ),
    ],
)
async def test_a_write_key_writes_and_commits(
    manager: AsyncSQLiteManager, query: str, affected: int | None, rows: Any
) -> None:
    result = await manager.execute_query(query, guard=WRITE)
    assert result.success, result.error
    assert result.rows_affected == affected
    # Answered after COMMIT: a trusted read on another connection sees it.
    after = await manager.execute_query("SELECT id, v FROM t ORDER BY id")
    assert after.data == rows


async def test_a_write_key_gets_returning_rows(manager: AsyncSQLiteManager) -> None:
    result = await manager.execute_query(
        "INSERT INTO t (id, v) VALUES (?, ?) RETURNING id, v", [9, "r"], guard=WRITE
    )
    assert result.success, result.error
    assert result.data == [{"id": 9, "v": "r"}]
    assert result.rows_affected == 1


# -- statements no key without admin may run ---------------------------------------

REFUSED = [
    ("PRAGMA query_only = 0", "PRAGMA"),
    ("PRAGMA query_only", "PRAGMA"),
    ("PRAGMA writable_schema = ON", "PRAGMA"),
    ("PRAGMA user_version = 7", "PRAGMA"),
    ("PRAGMA foreign_keys = OFF", "PRAGMA"),
    ("SELECT * FROM pragma_table_info('t')", "sqlite_master"),
    ("BEGIN", "BEGIN"),
    ("BEGIN IMMEDIATE", "BEGIN"),
    ("COMMIT", "COMMIT"),
    ("END", "COMMIT"),
    ("ROLLBACK", "ROLLBACK"),
    ("SAVEPOINT s", "SAVEPOINT"),
    ("RELEASE s", "RELEASE"),
    ("ROLLBACK TO s", "ROLLBACK TO"),
    ("CREATE TABLE n (a)", "CREATE TABLE"),
    ("CREATE TABLE IF NOT EXISTS t (a)", "CREATE TABLE"),
    ("CREATE TABLE n AS SELECT * FROM t", "CREATE TABLE"),
    ("CREATE TEMP TABLE n (a)", "CREATE TEMP TABLE"),
    ("CREATE VIEW w AS SELECT 1", "CREATE VIEW"),
    ("CREATE TEMP VIEW w AS SELECT 1", "CREATE TEMP VIEW"),
    ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END", "CREATE TRIGGER"),
    ("CREATE INDEX i ON t (v)", "CREATE INDEX"),
    ("CREATE VIRTUAL TABLE f USING fts5(x)", "CREATE VIRTUAL TABLE"),
    ("DROP TABLE t", "DROP TABLE"),
    ("DROP INDEX t_v", "DROP INDEX"),
    ("ALTER TABLE t ADD COLUMN c", "ALTER TABLE"),
    ("ALTER TABLE t RENAME TO u", "ALTER TABLE"),
    ("REINDEX", "REINDEX"),
    # SQLite reports nothing of these: not data statements either.
    ("REINDEX nocase", "statement"),
    ("DROP TABLE IF EXISTS missing", "statement"),
    ("ANALYZE", "ANALYZE"),
    ("VACUUM", "VACUUM"),
    ("VACUUM main", "VACUUM"),
    ("DETACH DATABASE main", "DETACH"),
    ("SELECT load_extension('x')", "function load_extension"),
    ("SELECT fts3_tokenizer('simple')", "function fts3_tokenizer"),
    ("DELETE FROM sqlite_sequence", "sqlite_sequence"),
    ("UPDATE sqlite_sequence SET seq = 100", "sqlite_sequence"),
    ("SELECT 1; DELETE FROM t", "multiple statements"),
    ("SELECT 1; ATTACH DATABASE 'x.db' AS x", "multiple statements"),
    ("SELECT 1 /* ; */; DROP TABLE t", "multiple statements"),
]


@BOTH
@pytest.mark.parametrize(("query", "kind"), REFUSED)
async def test_refused_for_every_key(
    manager: AsyncSQLiteManager, access: Access, query: str, kind: str
) -> None:
    before = await state(manager)
    result = await manager.execute_query(query, guard=access)
    assert_forbidden(result, kind)
    assert "db:NAME:admin" in (result.error or "")
    assert await state(manager) == before


@BOTH
async def test_attach_and_vacuum_into_create_no_file(
    manager: AsyncSQLiteManager, access: Access, tmp_path: Path
) -> None:
    attach = await manager.execute_query(
        f"ATTACH DATABASE '{tmp_path / 'x.db'}' AS x", guard=access
    )
    assert_forbidden(attach, "ATTACH")
    vacuum = await manager.execute_query(f"VACUUM INTO '{tmp_path / 'y.db'}'", guard=access)
    assert_forbidden(vacuum, "VACUUM")
    assert not (tmp_path / "x.db").exists()
    assert not (tmp_path / "y.db").exists()
    databases = await manager.execute_query("PRAGMA database_list", read_only=True)
    assert [row["name"] for row in databases.data] == ["main"]


@BOTH
async def test_the_reader_stays_query_only(one_reader: AsyncSQLiteManager, access: Access) -> None:
    for query in ("PRAGMA query_only = 0", "PRAGMA query_only = OFF", "PRAGMA query_only(0)"):
        assert_forbidden(await one_reader.execute_query(query, guard=access), "PRAGMA")
    # Trusted, read_only: runs on the one reader.
    mode = await one_reader.execute_query("PRAGMA query_only", read_only=True)
    assert mode.data == [{"query_only": 1}]
    schema = await one_reader.execute_query("PRAGMA writable_schema", read_only=True)
    assert schema.data == [{"writable_schema": 0}]


async def test_the_first_refused_step_names_the_refusal(manager: AsyncSQLiteManager) -> None:
    query = "INSERT INTO t (v) SELECT load_extension('x')"
    assert_forbidden(await manager.execute_query(query, guard=READ), "INSERT")
    assert_forbidden(await manager.execute_query(query, guard=WRITE), "function load_extension")
    assert (await manager.execute_query("SELECT count(*) AS n FROM t")).data == [{"n": 3}]


async def test_stacked_statement_never_runs(manager: AsyncSQLiteManager) -> None:
    for access in (READ, WRITE):
        for query in (
            "SELECT 1; DELETE FROM t",
            "SELECT 1;DELETE FROM t;",
            "VALUES (1);DELETE FROM t",
        ):
            assert_forbidden(await manager.execute_query(query, guard=access), "multiple")
    rows = await manager.execute_query("SELECT count(*) AS n FROM t")
    assert rows.data == [{"n": 3}]


@BOTH
async def test_a_trailing_semicolon_or_comment_is_one_statement(
    manager: AsyncSQLiteManager, access: Access
) -> None:
    for query in ("SELECT 1 AS n;", "SELECT 1 AS n; -- done", "SELECT 1 AS n; /* done */  "):
        result = await manager.execute_query(query, guard=access)
        assert result.data == [{"n": 1}], result.error


@BOTH
async def test_an_empty_text_is_a_query_error(manager: AsyncSQLiteManager, access: Access) -> None:
    for query in ("", "  -- nothing", ";"):
        result = await manager.execute_query(query, guard=access)
        assert result.error_type == "query_error"
        assert "empty" in (result.error or "")


async def test_other_clients_statements_are_not_readable(manager: AsyncSQLiteManager) -> None:
    probe = await manager.execute_query("SELECT count(*) AS n FROM sqlite_stmt")
    if not probe.success:
        pytest.skip("this SQLite has no sqlite_stmt table")
    for access in (READ, WRITE):
        result = await manager.execute_query("SELECT sql FROM sqlite_stmt", guard=access)
        assert_forbidden(result, "sqlite_stmt")


async def test_ordinary_errors_keep_their_type(manager: AsyncSQLiteManager) -> None:
    missing = await manager.execute_query("SELECT * FROM nowhere", guard=READ)
    assert missing.error_type == "query_error"
    assert "no such table" in (missing.error or "")
    syntax = await manager.execute_query("SELEC 1", guard=WRITE)
    assert syntax.error_type == "query_error"
    assert "iogate" not in (syntax.error or "")  # the cache marker stays inside
    unique = await manager.execute_query("INSERT INTO t (id, v) VALUES (1, 'x')", guard=WRITE)
    assert unique.error_type == "query_error"
    assert "UNIQUE" in (unique.error or "")
    count = await manager.execute_query("SELECT ?, ? AS n", [1], guard=READ)
    assert count.error_type == "invalid_request"


# -- the statement cache -----------------------------------------------------------


async def test_a_statement_compiled_for_trusted_code_is_checked_again(
    one_reader: AsyncSQLiteManager,
) -> None:
    # Trusted and read_only: compiled (and cached) on the one reader.
    trusted = await one_reader.execute_query("PRAGMA user_version", read_only=True)
    assert trusted.data == [{"user_version": 0}]
    assert_forbidden(await one_reader.execute_query("PRAGMA user_version", guard=READ), "PRAGMA")
    # The same on the writer: a trusted INSERT, then the same text from a
    # read key inside a guarded transaction on the writer.
    query = "INSERT INTO t (v) VALUES ('cached')"
    assert (await one_reader.execute_query(query)).success
    async with one_reader.transaction(guard=READ) as tx:
        result = await tx.execute_query(query)
    assert_forbidden(result, "INSERT")  # refused by the guard, not by query_only
    assert tx.status == "rolled_back"
    rows = await one_reader.execute_query("SELECT count(*) AS n FROM t WHERE v = 'cached'")
    assert rows.data == [{"n": 1}]


async def test_a_statement_compiled_for_a_write_key_is_checked_for_a_read_key(
    one_reader: AsyncSQLiteManager,
) -> None:
    query = "INSERT INTO t (v) VALUES ('w')"
    async with one_reader.transaction(guard=WRITE) as tx:
        assert (await tx.execute_query(query)).success
    assert tx.status == "committed"
    async with one_reader.transaction(guard=READ) as tx:
        assert_forbidden(await tx.execute_query(query), "INSERT")
    # And the write key's own text still works afterwards.
    assert (await one_reader.execute_query(query, guard=WRITE)).success
    rows = await one_reader.execute_query("SELECT count(*) AS n FROM t WHERE v = 'w'")
    assert rows.data == [{"n": 2}]


async def test_guarded_reads_are_not_recompiled(one_reader: AsyncSQLiteManager) -> None:
    probe = await one_reader.execute_query("SELECT count(*) AS n FROM sqlite_stmt", read_only=True)
    if not probe.success:
        pytest.skip("this SQLite has no sqlite_stmt table")
    query = "SELECT v FROM t WHERE id = ?"
    recompiled = "SELECT sum(reprep) AS n FROM sqlite_stmt"

    async def mixed_reads() -> None:
        # Guarded and trusted reads on the same reader connection.
        assert (await one_reader.execute_query(query, [1], guard=READ)).success
        assert (await one_reader.execute_query("SELECT count(*) AS n FROM t")).success

    # Installing the guard expires the cache once: the next round recompiles.
    await mixed_reads()
    await mixed_reads()
    before = await one_reader.execute_query(recompiled, read_only=True)
    for _ in range(50):
        await mixed_reads()
    after = await one_reader.execute_query(recompiled, read_only=True)
    assert after.data == before.data
    stats = await one_reader.execute_query(
        "SELECT run, reprep FROM sqlite_stmt WHERE sql LIKE ?", [f"%*/{query}"], read_only=True
    )
    assert stats.data == [{"run": 52, "reprep": 0}]


# -- transactions and groups -----------------------------------------------------------


async def test_guarded_write_transaction(manager: AsyncSQLiteManager) -> None:
    async with manager.transaction(guard=WRITE) as tx:
        assert (await tx.execute_query("INSERT INTO t (id, v) VALUES (4, 'd')")).success
        inside = await tx.execute_query("SELECT count(*) AS n FROM t")
        assert inside.data == [{"n": 4}]
        updated = await tx.execute_query("UPDATE t SET v = 'z' WHERE id = ?", [4])
        assert updated.rows_affected == 1
    assert tx.status == "committed"
    rows = await manager.execute_query("SELECT v FROM t WHERE id = 4")
    assert rows.data == [{"v": "z"}]


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("COMMIT", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("SAVEPOINT s", "SAVEPOINT"),
        ("RELEASE iogate_write", "RELEASE"),
        ("PRAGMA query_only = 1", "PRAGMA"),
        ("CREATE TEMP TABLE n (a)", "CREATE TEMP TABLE"),
        ("DROP TABLE t", "DROP TABLE"),
        ("SELECT 1; COMMIT", "multiple statements"),
        ("DROP TABLE IF EXISTS missing", "statement"),
    ],
)
async def test_guarded_write_transaction_refuses_and_rolls_back(
    manager: AsyncSQLiteManager, query: str, kind: str
) -> None:
    before = await state(manager)
    async with manager.transaction(guard=WRITE) as tx:
        assert (await tx.execute_query("INSERT INTO t (id, v) VALUES (4, 'd')")).success
        assert_forbidden(await tx.execute_query(query), kind)
        # The transaction is still the one iogate opened.
        inside = await tx.execute_query("SELECT count(*) AS n FROM t")
        assert inside.data == [{"n": 4}]
    assert tx.status == "rolled_back"
    assert await state(manager) == before
    # The writer is left as it was: trusted writes commit, outside any transaction.
    assert (await manager.execute_query("INSERT INTO t (id, v) VALUES (5, 'e')")).success
    async with manager.transaction() as trusted:
        await trusted.execute_query("INSERT INTO t (id, v) VALUES (6, 'f')")
    assert trusted.status == "committed"
    rows = await manager.execute_query("SELECT id FROM t ORDER BY id")
    assert rows.data == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 5}, {"id": 6}]


async def test_guarded_read_transaction(manager: AsyncSQLiteManager) -> None:
    async with manager.transaction(guard=READ) as tx:
        assert (await tx.execute_query("SELECT count(*) AS n FROM t")).data == [{"n": 3}]
        assert_forbidden(await tx.execute_query("DELETE FROM t"), "DELETE")
    assert tx.status == "rolled_back"
    assert (await manager.execute_query("SELECT count(*) AS n FROM t")).data == [{"n": 3}]
    # The writer is writable again.
    assert (await manager.execute_query("INSERT INTO t (id, v) VALUES (4, 'd')")).success


async def test_refused_writes_fail_only_their_callers(manager: AsyncSQLiteManager) -> None:
    calls = []
    for i in range(40):
        if i % 4 == 0:
            calls.append(manager.execute_query("COMMIT", guard=WRITE))
        elif i % 4 == 1:
            calls.append(manager.execute_query("DELETE FROM t", guard=READ))
        elif i % 4 == 2:
            calls.append(manager.execute_query("INSERT INTO t (v) VALUES (?)", [i], guard=WRITE))
        else:
            calls.append(manager.execute_query("INSERT INTO t (v) VALUES (?)", [i]))
    results = await asyncio.gather(*calls)
    for i, result in enumerate(results):
        if i % 4 < 2:
            assert result.error_type == "forbidden_statement", result.error
        else:
            assert result.success, result.error
    rows = await manager.execute_query("SELECT count(*) AS n FROM t")
    assert rows.data == [{"n": 3 + 20}]


async def test_refused_reads_fail_only_their_callers(manager: AsyncSQLiteManager) -> None:
    calls = []
    for i in range(60):
        if i % 3 == 0:
            calls.append(manager.execute_query("ROLLBACK", guard=READ))
        elif i % 3 == 1:
            calls.append(manager.execute_query("SELECT count(*) AS n FROM t", guard=READ))
        else:
            calls.append(manager.execute_query("SELECT count(*) AS n FROM t"))
    results = await asyncio.gather(*calls)
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert_forbidden(result, "ROLLBACK")
        else:
            assert result.data == [{"n": 3}], result.error


async def test_a_write_key_on_a_read_only_call_cannot_write(manager: AsyncSQLiteManager) -> None:
    result = await manager.execute_query("DELETE FROM t", guard=WRITE, read_only=True)
    assert result.error_type == "read_only"
    read = await manager.execute_query("SELECT count(*) AS n FROM t", guard=WRITE, read_only=True)
    assert read.data == [{"n": 3}]


async def test_in_memory_database(tmp_path: Path) -> None:
    async with AsyncSQLiteManager(":memory:") as manager:
        await _setup(manager)
        assert (await manager.execute_query("SELECT count(*) AS n FROM t", guard=READ)).data == [
            {"n": 3}
        ]
        assert_forbidden(await manager.execute_query("DELETE FROM t", guard=READ), "DELETE")
        assert_forbidden(await manager.execute_query("PRAGMA query_only = 0", guard=READ), "PRAGMA")
        written = await manager.execute_query("INSERT INTO t (v) VALUES ('m')", guard=WRITE)
        assert written.success, written.error
        assert_forbidden(
            await manager.execute_query(f"ATTACH '{tmp_path / 'm.db'}' AS m", guard=WRITE), "ATTACH"
        )
        # The single connection is writable again for trusted code.
        assert (await manager.execute_query("INSERT INTO t (v) VALUES ('n')")).success
        rows = await manager.execute_query("SELECT count(*) AS n FROM t")
        assert rows.data == [{"n": 5}]
    assert not (tmp_path / "m.db").exists()


async def test_guarded_read_keeps_the_deadline(manager: AsyncSQLiteManager) -> None:
    slow = (
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3000000) "
        "SELECT count(*) AS n FROM c"
    )
    late = await manager.execute_query(slow, guard=READ, deadline=Deadline(0.01))
    assert late.error_type == "timeout"


async def test_trusted_code_is_unchanged_after_guarded_work(manager: AsyncSQLiteManager) -> None:
    assert_forbidden(await manager.execute_query("PRAGMA user_version = 3", guard=WRITE), "PRAGMA")
    assert (await manager.execute_query("PRAGMA user_version = 3")).success
    version = await manager.execute_query("PRAGMA user_version")
    assert version.data == [{"user_version": 3}]
    created = await manager.execute_query("CREATE TABLE later (a)")
    assert created.success, created.error
    refused = await manager.execute_query("BEGIN")
    assert refused.error_type == "invalid_request"  # trusted code: as before
