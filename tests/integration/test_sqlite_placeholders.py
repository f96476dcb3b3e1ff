"""SQLite understands ``$n`` placeholders as PostgreSQL does: by number, not by order.

To SQLite, ``$2`` and ``$1`` are named parameters numbered in order of
appearance, so binding ``[1, 2]`` by position to ``SELECT $2, $1`` would
swap them. iogate binds them by name.
"""

from __future__ import annotations

from iogate import Access, AsyncSQLiteManager


async def test_dollar_placeholders_bind_by_number(sqlite_manager: AsyncSQLiteManager) -> None:
    result = await sqlite_manager.execute_query("SELECT $2 AS b, $1 AS a, $2 AS b2", [1, 2])
    assert result.success, result.error
    assert result.data == [{"b": 2, "a": 1, "b2": 2}]


async def test_dollar_placeholders_in_writes_transactions_and_guarded_reads(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    assert (await sqlite_manager.execute_query("CREATE TABLE pl (a TEXT, b TEXT)")).success
    written = await sqlite_manager.execute_query(
        "INSERT INTO pl VALUES ($2, $1)", {"1": "one", "2": "two"}
    )
    assert written.success, written.error
    assert written.rows_affected == 1
    async with sqlite_manager.transaction() as tx:
        inside = await tx.execute_query("SELECT b FROM pl WHERE a = $1", ["two"])
        assert inside.data == [{"b": "one"}]
    guarded = await sqlite_manager.execute_query(
        "SELECT a FROM pl WHERE b = $1", ["one"], guard=Access.READ
    )
    assert guarded.success, guarded.error
    assert guarded.data == [{"a": "two"}]


async def test_placeholder_errors_name_the_style(sqlite_manager: AsyncSQLiteManager) -> None:
    mixed = await sqlite_manager.execute_query("SELECT $1, ?", [1, 2])
    assert mixed.error_type == "invalid_request"
    assert mixed.error == "query mixes ? and $n placeholders; use one style"
    short = await sqlite_manager.execute_query("SELECT $3", [1])
    assert short.error == "query expects 3 parameters, got 1"
    qmark = await sqlite_manager.execute_query("SELECT ?", [])
    assert qmark.error == "query expects 1 parameter, got 0"


async def test_dollar_in_a_literal_is_not_a_placeholder(sqlite_manager: AsyncSQLiteManager) -> None:
    result = await sqlite_manager.execute_query("SELECT '$1' AS text, ? AS n", [5])
    assert result.data == [{"text": "$1", "n": 5}]
    numbered = await sqlite_manager.execute_query("SELECT ?2 AS b, ?1 AS a", ["x", "y"])
    assert numbered.data == [{"b": "y", "a": "x"}]
