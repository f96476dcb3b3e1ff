"""AsyncSQLiteManager against real SQLite files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from iogate import AsyncOperationOrchestrator, AsyncSQLiteManager, DatabaseType


async def test_seed_example(tmp_path: Path) -> None:
    manager = AsyncSQLiteManager(str(tmp_path / "cache.db"), max_connections=5)
    await manager.initialize_pool()
    try:
        await manager.execute_query("CREATE TABLE cache (key TEXT PRIMARY KEY, value TEXT)")
        user_data = {"name": "ada"}
        result = await manager.execute_query(
            "INSERT INTO cache (key, value) VALUES (?, ?)",
            {"1": "user:123", "2": json.dumps(user_data)},
        )
        assert result.success, result.error
        assert result.rows_affected == 1
        read = await manager.execute_query("SELECT * FROM cache WHERE key = ?", ["user:123"])
        assert read.data == [{"key": "user:123", "value": '{"name": "ada"}'}]
    finally:
        await manager.close()


async def test_wal_mode_and_pragmas(sqlite_manager: AsyncSQLiteManager) -> None:
    mode = await sqlite_manager.execute_query("PRAGMA journal_mode")
    assert mode.data == [{"journal_mode": "wal"}]
    busy = await sqlite_manager.execute_query("PRAGMA busy_timeout")
    assert busy.data == [{"timeout": 5000}]


async def test_100_writers_and_100_readers_lose_nothing(sqlite_manager: AsyncSQLiteManager) -> None:
    await sqlite_manager.execute_query("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    writes = [
        sqlite_manager.execute_query("INSERT INTO items (id, v) VALUES (?, ?)", [i, f"v{i}"])
        for i in range(100)
    ]
    reads = [sqlite_manager.execute_query("SELECT count(*) AS n FROM items") for _ in range(100)]
    results = await asyncio.gather(*writes, *reads)
    errors = [r.error for r in results if not r.success]
    assert errors == []
    assert all("locked" not in (r.error or "") for r in results)
    count = await sqlite_manager.execute_query("SELECT count(*) AS n FROM items")
    assert count.data == [{"n": 100}]


async def test_failed_write_fails_only_its_caller(sqlite_manager: AsyncSQLiteManager) -> None:
    await sqlite_manager.execute_query("CREATE TABLE uniq (id INTEGER PRIMARY KEY)")
    results = await asyncio.gather(
        *(
            sqlite_manager.execute_query("INSERT INTO uniq (id) VALUES (?)", [i % 10])
            for i in range(20)
        )
    )
    assert sum(r.success for r in results) == 10
    assert {r.error_type for r in results if not r.success} == {"query_error"}
    assert all("UNIQUE" in (r.error or "") for r in results if not r.success)
    count = await sqlite_manager.execute_query("SELECT count(*) AS n FROM uniq")
    assert count.data == [{"n": 10}]


async def test_write_through_a_with_clause_is_rerouted(sqlite_manager: AsyncSQLiteManager) -> None:
    await sqlite_manager.execute_query("CREATE TABLE w (n INTEGER)")
    result = await sqlite_manager.execute_query(
        "WITH v(n) AS (VALUES (1), (2)) INSERT INTO w SELECT n FROM v"
    )
    assert result.success, result.error
    count = await sqlite_manager.execute_query("SELECT count(*) AS n FROM w")
    assert count.data == [{"n": 2}]


async def test_read_only_refused_by_sqlite(sqlite_manager: AsyncSQLiteManager) -> None:
    result = await sqlite_manager.execute_query("CREATE TABLE nope (id INTEGER)", read_only=True)
    assert result.error_type == "read_only"
    tables = await sqlite_manager.execute_query(
        "SELECT name FROM sqlite_master WHERE name = 'nope'"
    )
    assert tables.data == []


async def test_bad_query_and_parameter_errors(sqlite_manager: AsyncSQLiteManager) -> None:
    bad = await sqlite_manager.execute_query("SELEC 1")
    assert bad.error_type == "query_error"
    assert "syntax error" in (bad.error or "")
    gap = await sqlite_manager.execute_query("SELECT ?, ?", {"1": 1, "3": 3})
    assert gap.error_type == "invalid_request"
    assert "missing 2" in (gap.error or "")
    count = await sqlite_manager.execute_query("SELECT ?, ?", [1])
    assert "expects 2 parameters, got 1" in (count.error or "")
    stacked = await sqlite_manager.execute_query("SELECT 1; SELECT 2")
    assert stacked.error_type == "query_error"
    begin = await sqlite_manager.execute_query("BEGIN")
    assert begin.error_type == "invalid_request"


async def test_transaction_all_or_nothing(sqlite_manager: AsyncSQLiteManager) -> None:
    await sqlite_manager.execute_query("CREATE TABLE tx (id INTEGER PRIMARY KEY, v TEXT)")
    async with sqlite_manager.transaction() as tx:
        await tx.execute_query("INSERT INTO tx (id, v) VALUES (?, ?)", [1, "kept"])
    assert tx.status == "committed"

    async with sqlite_manager.transaction() as tx:
        await tx.execute_query("INSERT INTO tx (id, v) VALUES (?, ?)", [2, "lost"])
        inside = await tx.execute_query("SELECT count(*) AS n FROM tx")
        assert inside.data == [{"n": 2}]
        failed = await tx.execute_query("INSERT INTO tx (id, v) VALUES (?, ?)", [1, "dup"])
        assert not failed.success
    assert tx.status == "rolled_back"

    with pytest.raises(RuntimeError):
        async with sqlite_manager.transaction() as tx:
            await tx.execute_query("INSERT INTO tx (id, v) VALUES (?, ?)", [3, "lost"])
            raise RuntimeError("boom")

    rows = await sqlite_manager.execute_query("SELECT v FROM tx ORDER BY id")
    assert rows.data == [{"v": "kept"}]
    # The writer is free again: group commits still work.
    after = await sqlite_manager.execute_query("INSERT INTO tx (id, v) VALUES (?, ?)", [4, "x"])
    assert after.success


async def test_blob_and_max_rows(sqlite_manager: AsyncSQLiteManager) -> None:
    blob = await sqlite_manager.execute_query("SELECT x'0102' AS b")
    assert blob.data == [{"b": "AQI="}]
    many = await sqlite_manager.execute_query(
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 50) "
        "SELECT n FROM c",
        max_rows=5,
    )
    assert many.truncated
    assert len(many.data) == 5


async def test_in_memory_database() -> None:
    async with AsyncSQLiteManager(":memory:") as manager:
        await manager.execute_query("CREATE TABLE m (v TEXT)")
        await manager.execute_query("INSERT INTO m VALUES (?)", ["a"])
        result = await manager.execute_query("SELECT v FROM m")
        assert result.data == [{"v": "a"}]


async def test_orchestrator_sqlite(tmp_path: Path) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_database_manager(
            "local", DatabaseType.SQLITE, str(tmp_path / "o.db"), max_connections=3
        )
        result = await orchestrator.execute_database_operation("local", "SELECT ? AS v", {"1": 5})
        assert result.data == [{"v": 5}]
        stats = orchestrator.get_stats()["databases"]["local"]
        assert stats["count"] == 1
        assert stats["pool"]["readers"] == 2


async def test_unopenable_path_is_a_connection_error(tmp_path: Path) -> None:
    manager = AsyncSQLiteManager(str(tmp_path / "missing-dir" / "x.db"))
    result = await manager.execute_query("SELECT 1")
    assert result.error_type == "connection_error"
    await manager.close()
