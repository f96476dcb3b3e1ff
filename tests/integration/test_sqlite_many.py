"""``AsyncSQLiteManager.execute_many``: a batch's group of identical statements.

One job on the writer, one transaction: every statement or none. Each
statement is still one recorded operation of the manager (stats and
events), as when it runs alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from iogate.backends.sqlite import AsyncSQLiteManager
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import OperationTimeoutError
from iogate.core.sqlguard import Access

INSERT = "INSERT INTO users (email) VALUES (?)"
ENDLESS_INSERT = (
    "INSERT INTO users (email) WITH RECURSIVE r(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM r)"
    " SELECT count(*) FROM r"
)


@pytest.fixture
async def lite(sqlite_manager: AsyncSQLiteManager) -> AsyncSQLiteManager:
    created = await sqlite_manager.execute_query(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL)"
    )
    assert created.success, created.error
    return sqlite_manager


async def count(manager: AsyncSQLiteManager) -> int:
    result = await manager.execute_query("SELECT count(*) AS n FROM users")
    assert result.success, result.error
    n: int = result.data[0]["n"]
    return n


async def test_every_statement_is_written_and_answered(lite: AsyncSQLiteManager) -> None:
    results = await lite.execute_many(INSERT, [["a@x.io"], ["b@x.io"], ["c@x.io"]])
    assert results is not None
    assert [(r.success, r.rows_affected, r.resource) for r in results] == [(True, 1, lite.name)] * 3
    assert [r.last_insert_id for r in results] == [1, 2, 3]
    assert await count(lite) == 3


async def test_a_failing_statement_rolls_back_the_group(lite: AsyncSQLiteManager) -> None:
    before = lite.get_stats()["count"]
    assert await lite.execute_many(INSERT, [["a@x.io"], ["b@x.io"], ["a@x.io"]]) is None
    # Nothing was written, and nothing recorded: the caller runs them again one by one.
    assert lite.get_stats()["count"] == before
    assert await count(lite) == 0


async def test_an_update_keeps_its_own_rows_affected(lite: AsyncSQLiteManager) -> None:
    await lite.execute_many(INSERT, [["a@x.io"], ["b@x.io"]])
    results = await lite.execute_many(
        "UPDATE users SET email = email || '.old' WHERE email LIKE ?", [["a%"], ["%x.io"], ["z%"]]
    )
    assert results is not None
    assert [r.rows_affected for r in results] == [1, 1, 0]
    assert [r.last_insert_id for r in results] == [None] * 3


async def test_statements_are_recorded_one_by_one(lite: AsyncSQLiteManager) -> None:
    before = lite.get_stats()
    results = await lite.execute_many(INSERT, [[f"u{i}@x.io"] for i in range(5)])
    assert results is not None
    after = lite.get_stats()
    assert after["count"] == before["count"] + 5
    assert after["errors"] == before["errors"]
    assert all(r.duration_ms is not None and r.duration_ms >= 0 for r in results)


async def test_bad_parameters_in_one_set_leave_it_to_run_alone(lite: AsyncSQLiteManager) -> None:
    assert await lite.execute_many(INSERT, [["a@x.io"], ["b@x.io", "extra"]]) is None
    assert await count(lite) == 0


async def test_transaction_control_fails_every_statement(lite: AsyncSQLiteManager) -> None:
    results = await lite.execute_many("BEGIN", [[], []])
    assert results is not None
    assert [r.error_type for r in results] == ["invalid_request"] * 2


async def test_a_read_guard_refuses_every_write(lite: AsyncSQLiteManager) -> None:
    before = lite.get_stats()
    results = await lite.execute_many(INSERT, [["a@x.io"], ["b@x.io"]], guard=Access.READ)
    assert results is not None
    assert [r.error_type for r in results] == ["forbidden_statement"] * 2
    after = lite.get_stats()
    assert (after["count"], after["errors"]) == (before["count"] + 2, before["errors"] + 2)
    assert await count(lite) == 0


async def test_a_write_guard_lets_writes_through(lite: AsyncSQLiteManager) -> None:
    results = await lite.execute_many(INSERT, [["a@x.io"], ["b@x.io"]], guard=Access.WRITE)
    assert results is not None
    assert [(r.success, r.rows_affected) for r in results] == [(True, 1), (True, 1)]
    # A guarded statement never reports the connection's last rowid.
    assert [r.last_insert_id for r in results] == [None, None]
    forbidden = await lite.execute_many("DROP TABLE users", [[]], guard=Access.WRITE)
    assert forbidden is not None
    assert forbidden[0].error_type == "forbidden_statement"
    assert await count(lite) == 2


async def test_a_read_only_database_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "ro.db")
    async with AsyncSQLiteManager(path) as writable:
        await writable.execute_query("CREATE TABLE users (email TEXT)")
    options = DatabaseOptions(max_connections=2, read_only=True)
    async with AsyncSQLiteManager(path, options=options) as read_only:
        assert await read_only.execute_many(INSERT, [["a@x.io"]]) is None
        rows = await read_only.execute_query("SELECT count(*) AS n FROM users")
        assert rows.data == [{"n": 0}]


async def test_a_statement_past_the_deadline_raises_and_writes_nothing(
    lite: AsyncSQLiteManager,
) -> None:
    before = lite.get_stats()
    with pytest.raises(OperationTimeoutError):
        await lite.execute_many(ENDLESS_INSERT, [[1], [2]], deadline=Deadline(0.2))
    after = lite.get_stats()
    assert (after["count"], after["errors"]) == (before["count"] + 2, before["errors"] + 2)
    # The writer was freed and the group rolled back.
    results = await lite.execute_many(INSERT, [["a@x.io"]], deadline=Deadline(5))
    assert results is not None
    assert results[0].success
    assert await count(lite) == 1


async def test_an_in_memory_database_runs_groups_too() -> None:
    async with AsyncSQLiteManager(":memory:") as memory:
        await memory.execute_query("CREATE TABLE t (x INTEGER)")
        results = await memory.execute_many("INSERT INTO t VALUES (?)", [[1], [2]])
        assert results is not None
        assert [r.rows_affected for r in results] == [1, 1]
        total = await memory.execute_query("SELECT sum(x) AS s FROM t")
        assert total.data == [{"s": 3}]


def test_target_is_the_path_with_secrets_masked() -> None:
    assert AsyncSQLiteManager("data/app.db").target == "data/app.db"
    assert AsyncSQLiteManager(":memory:").target == ":memory:"
    uri = AsyncSQLiteManager("file:app.db?mode=ro&password=hunter22")
    assert uri.target == "file:app.db?mode=ro&password=***"
