"""AsyncSQLiteManager against real SQLite files."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from pathlib import Path

import pytest

from iogate import AsyncOperationOrchestrator, AsyncSQLiteManager, DatabaseType, Deadline
from tests.conftest import poll


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


# -- worker threads, batched hops, sessions ------------------------------------


def _sqlite_threads(manager: AsyncSQLiteManager) -> list[threading.Thread]:
    prefix = f"iogate-sqlite-{manager.name}-"
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def _collect(holder: list[AsyncSQLiteManager]) -> None:
    holder.clear()
    gc.collect()


async def test_cancelled_writes_run_fully_or_not_at_all(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    await sqlite_manager.execute_query("CREATE TABLE pairs (k INTEGER, side TEXT)")
    insert_pair = "INSERT INTO pairs SELECT ?, side FROM (SELECT 'a' AS side UNION ALL SELECT 'b')"
    tasks = [
        asyncio.create_task(sqlite_manager.execute_query(insert_pair, [i])) for i in range(300)
    ]
    await asyncio.sleep(0)  # every task has queued its write
    for i, task in enumerate(tasks):
        if i % 3 == 0:
            task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    ok = {i for i, r in enumerate(outcomes) if not isinstance(r, BaseException) and r.success}
    assert ok == {i for i in range(300) if i % 3}
    per_key = await sqlite_manager.execute_query(
        "SELECT k, count(*) AS n FROM pairs GROUP BY k ORDER BY k"
    )
    assert {row["n"] for row in per_key.data} == {2}  # never half a statement
    assert ok <= {row["k"] for row in per_key.data}
    # The writer is not left inside a transaction: a new one starts and commits.
    async with sqlite_manager.transaction() as tx:
        await tx.execute_query("INSERT INTO pairs VALUES (-1, 'tx')")
    assert tx.status == "committed"


async def test_writes_wait_out_a_transaction_and_never_join_it(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    await sqlite_manager.execute_query("CREATE TABLE uniq (id INTEGER PRIMARY KEY)")
    with pytest.raises(RuntimeError):
        async with sqlite_manager.transaction() as tx:
            await tx.execute_query("INSERT INTO uniq VALUES (100)")
            writes = [
                asyncio.create_task(
                    sqlite_manager.execute_query("INSERT INTO uniq VALUES (?)", [i % 5])
                )
                for i in range(10)
            ]
            assert await poll(lambda: sqlite_manager.pool_details()["write_queue"] == 10)
            inside = await tx.execute_query("SELECT count(*) AS n FROM uniq")
            assert inside.data == [{"n": 1}]
            raise RuntimeError("roll back the transaction")
    # Released together, the ten writes form one group: five commit, and each
    # duplicate fails alone.
    results = await asyncio.gather(*writes)
    assert sum(r.success for r in results) == 5
    assert all("UNIQUE" in (r.error or "") for r in results if not r.success)
    rows = await sqlite_manager.execute_query("SELECT id FROM uniq ORDER BY id")
    assert rows.data == [{"id": i} for i in range(5)]


async def test_write_during_read_only_transaction_is_not_refused(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    await sqlite_manager.execute_query("CREATE TABLE ro (v INTEGER)")
    async with sqlite_manager.transaction(read_only=True) as tx:
        write = asyncio.create_task(sqlite_manager.execute_query("INSERT INTO ro VALUES (1)"))
        assert await poll(lambda: sqlite_manager.pool_details()["write_queue"] == 1)
        refused = await tx.execute_query("INSERT INTO ro VALUES (2)")
        assert refused.error_type == "read_only"
    result = await write
    assert result.success, result.error
    rows = await sqlite_manager.execute_query("SELECT v FROM ro")
    assert rows.data == [{"v": 1}]


async def test_write_past_its_deadline_while_queued_never_runs(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    await sqlite_manager.execute_query("CREATE TABLE late (v INTEGER)")
    async with sqlite_manager.transaction() as tx:
        late = await sqlite_manager.execute_query(
            "INSERT INTO late VALUES (1)", deadline=Deadline(0.05)
        )
        assert late.error_type == "timeout"
        await tx.execute_query("INSERT INTO late VALUES (2)")
    await sqlite_manager.execute_query("INSERT INTO late VALUES (3)")
    rows = await sqlite_manager.execute_query("SELECT v FROM late ORDER BY v")
    assert rows.data == [{"v": 2}, {"v": 3}]


async def test_read_past_its_deadline_times_out_and_readers_keep_serving(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    slow = (
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 2000000) "
        "SELECT count(*) AS n FROM c"
    )
    late = await sqlite_manager.execute_query(slow, deadline=Deadline(0.01))
    assert late.error_type == "timeout"
    assert "deadline" in (late.error or "")
    results = await asyncio.gather(
        *(sqlite_manager.execute_query("SELECT ? AS v", [i]) for i in range(100))
    )
    assert [r.data for r in results] == [[{"v": i}] for i in range(100)]


async def test_reads_pass_over_a_reader_stuck_on_a_long_statement(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    # White-box: a job that blocks reader 0 stands in for a long query, so
    # the test does not depend on how fast this machine runs one.
    first_reader = sqlite_manager._readers[0]
    release = threading.Event()
    stuck = first_reader.submit(lambda conn: release.wait(10), ())
    try:
        assert await poll(
            lambda: (
                first_reader.job_started and time.perf_counter() - first_reader.job_started > 0.01
            )
        )
        result = await sqlite_manager.execute_query("SELECT 7 AS v", deadline=Deadline(2.0))
        assert result.data == [{"v": 7}]
        assert not stuck.done()
    finally:
        release.set()
    assert await stuck is True


async def test_unbindable_integer_fails_only_its_caller(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    await sqlite_manager.execute_query("CREATE TABLE big (v INTEGER)")
    results = await asyncio.gather(
        *(
            sqlite_manager.execute_query("INSERT INTO big VALUES (?)", [2**70 if i == 3 else i])
            for i in range(8)
        )
    )
    assert [r.error_type for r in results] == [None, None, None, "invalid_request"] + [None] * 4
    assert "too large" in (results[3].error or "")
    read = await sqlite_manager.execute_query("SELECT ? AS v", [2**70])
    assert read.error_type == "invalid_request"
    surrogate = await sqlite_manager.execute_query("SELECT ? AS v", ["\ud800"])
    assert surrogate.error_type == "invalid_request"
    count = await sqlite_manager.execute_query("SELECT count(*) AS n FROM big")
    assert count.data == [{"n": 7}]


async def test_close_with_work_queued_finishes_or_refuses_it(tmp_path: Path) -> None:
    manager = AsyncSQLiteManager(str(tmp_path / "close.db"), name="closing")
    await manager.initialize_pool()
    await manager.execute_query("CREATE TABLE c (v INTEGER)")
    work = [
        asyncio.create_task(manager.execute_query("INSERT INTO c VALUES (?)", [i]))
        for i in range(50)
    ] + [asyncio.create_task(manager.execute_query("SELECT ? AS v", [i])) for i in range(50)]
    await asyncio.sleep(0)
    await manager.close()
    results = await asyncio.gather(*work)
    assert {r.error_type for r in results} <= {None, "closed"}
    assert _sqlite_threads(manager) == []


async def test_unclosed_manager_warns_and_its_threads_end(tmp_path: Path) -> None:
    manager = AsyncSQLiteManager(str(tmp_path / "leak.db"), name="leaky")
    await manager.initialize_pool()
    threads = _sqlite_threads(manager)
    assert len(threads) == 5
    holder = [manager]
    del manager
    with pytest.warns(ResourceWarning, match="never closed"):
        _collect(holder)
    assert await poll(lambda: not any(t.is_alive() for t in threads))


async def test_write_cancelled_while_queued_in_the_writer_thread_never_runs(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    await sqlite_manager.execute_query("CREATE TABLE gone (v INTEGER)")
    # White-box: hold the writer thread so the writes queue there.
    writer = sqlite_manager._writer
    assert writer is not None
    release = threading.Event()
    blocker = writer.submit(lambda conn: release.wait(10), ())
    try:
        tasks = [
            asyncio.create_task(sqlite_manager.execute_query("INSERT INTO gone VALUES (?)", [i]))
            for i in range(4)
        ]
        assert await poll(lambda: sqlite_manager.pool_details()["write_queue"] == 4)
        tasks[1].cancel()
        tasks[2].cancel()
    finally:
        release.set()
    assert await blocker is True
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [isinstance(r, asyncio.CancelledError) for r in results] == [False, True, True, False]
    rows = await sqlite_manager.execute_query("SELECT v FROM gone ORDER BY v")
    assert rows.data == [{"v": 0}, {"v": 3}]


async def test_batched_reads_see_every_write_their_caller_saw_committed(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    await sqlite_manager.execute_query("CREATE TABLE own (k INTEGER PRIMARY KEY, v INTEGER)")

    async def write_then_read(k: int) -> list[object]:
        for v in range(5):
            written = await sqlite_manager.execute_query(
                "INSERT OR REPLACE INTO own (k, v) VALUES (?, ?)", [k, v]
            )
            assert written.success, written.error
            read = await sqlite_manager.execute_query("SELECT v FROM own WHERE k = ?", [k])
            if read.data != [{"v": v}]:
                return [k, v, read.data]
        return []

    stale = await asyncio.gather(*(write_then_read(k) for k in range(60)))
    assert [s for s in stale if s] == []


async def test_failing_read_in_a_batch_fails_alone(sqlite_manager: AsyncSQLiteManager) -> None:
    queries = ["SELECT ? AS v"] * 30
    queries[7] = "SELECT v FROM no_such_table WHERE v = ?"
    results = await asyncio.gather(
        *(sqlite_manager.execute_query(q, [i]) for i, q in enumerate(queries))
    )
    assert [r.success for r in results] == [i != 7 for i in range(30)]
    assert "no such table" in (results[7].error or "")
    assert [r.data for i, r in enumerate(results) if i != 7] == [
        [{"v": i}] for i in range(30) if i != 7
    ]


async def test_readers_hold_no_snapshot_between_batches(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    await sqlite_manager.execute_query("CREATE TABLE snap (v INTEGER)")
    await sqlite_manager.execute_query("INSERT INTO snap VALUES (1)")
    reads = await asyncio.gather(
        *(sqlite_manager.execute_query("SELECT count(*) AS n FROM snap") for _ in range(200))
    )
    assert all(r.data == [{"n": 1}] for r in reads)
    await sqlite_manager.execute_query("INSERT INTO snap VALUES (2)")
    # A reader still inside a read transaction would make this wait for the
    # busy timeout and report busy = 1.
    checkpoint = await sqlite_manager.execute_query("PRAGMA wal_checkpoint(TRUNCATE)")
    assert checkpoint.data[0]["busy"] == 0
