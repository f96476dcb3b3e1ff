"""AsyncPostgreSQLManager against the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from iogate import (
    AsyncOperationOrchestrator,
    AsyncPostgreSQLManager,
    DatabaseConnectionPool,
    DatabaseOptions,
    DatabaseType,
    Deadline,
    get_database_connection,
)
from tests.conftest import free_port, poll

pytestmark = pytest.mark.postgres


async def test_seed_example_returns_list_of_dicts(postgres_url: str, pg_table: str) -> None:
    manager = AsyncPostgreSQLManager(postgres_url, max_connections=20)
    await manager.initialize_pool()
    try:
        insert = await manager.execute_query(
            f"INSERT INTO {pg_table} (name, n) VALUES ($1, $2) RETURNING id",
            {"1": "ada", "2": 36},
        )
        assert insert.success, insert.error
        user_id = insert.data[0]["id"]
        assert insert.rows_affected == 1
        result = await manager.execute_query(
            f"SELECT * FROM {pg_table} WHERE id = $1", {"1": user_id}
        )
        assert result.success
        assert result.data == [{"id": user_id, "name": "ada", "n": 36}]
        assert result.resource == manager.name
        assert result.duration_ms > 0
    finally:
        await manager.close()


async def test_json_friendly_values(pg_manager: AsyncPostgreSQLManager) -> None:
    result = await pg_manager.execute_query(
        "SELECT '5d9b6a0e-4a2f-4e1c-9b1e-2c3d4e5f6a7b'::uuid AS u, 12.50::numeric AS d,"
        " '2026-01-02T03:04:05Z'::timestamptz AS ts, '2026-01-02'::date AS day,"
        " '{\"a\": [1, 2]}'::jsonb AS j, '\\x0102'::bytea AS b, interval '90 seconds' AS span"
    )
    assert result.success, result.error
    assert result.data == [
        {
            "u": "5d9b6a0e-4a2f-4e1c-9b1e-2c3d4e5f6a7b",
            "d": "12.50",
            "ts": "2026-01-02T03:04:05+00:00",
            "day": "2026-01-02",
            "j": {"a": [1, 2]},
            "b": "AQI=",
            "span": 90.0,
        }
    ]


async def test_bad_query_is_a_failed_result(pg_manager: AsyncPostgreSQLManager) -> None:
    result = await pg_manager.execute_query("SELEC 1")
    assert not result.success
    assert result.error_type == "query_error"
    assert "syntax error" in (result.error or "")
    missing = await pg_manager.execute_query("SELECT * FROM no_such_table_here")
    assert missing.error_type == "query_error"
    assert "does not exist" in (missing.error or "")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"1": 1, "3": 3}, "missing 2"),
        ({"a": 1}, "not a position"),
        ([1], "expects 2 parameters, got 1"),
    ],
)
async def test_parameter_errors_name_the_problem(
    pg_manager: AsyncPostgreSQLManager, params: object, message: str
) -> None:
    result = await pg_manager.execute_query("SELECT $1::int + $2::int AS s", params)  # type: ignore[arg-type]
    assert result.error_type == "invalid_request"
    assert message in (result.error or "")


async def test_200_concurrent_queries_through_20_connections(postgres_url: str) -> None:
    manager = AsyncPostgreSQLManager(postgres_url, max_connections=20)
    async with manager:
        results = await asyncio.gather(
            *(
                manager.execute_query("SELECT $1::int AS i, pg_sleep(0.005)", [i])
                for i in range(200)
            )
        )
        assert all(r.success for r in results), {r.error for r in results}
        assert [r.data[0]["i"] for r in results] == list(range(200))
        stats = manager.pool_stats()
        assert stats["size"] <= 20
        assert stats["in_use"] == 0


async def test_statement_timeout_returns_timeout_and_connection_is_reusable(
    postgres_url: str,
) -> None:
    manager = AsyncPostgreSQLManager(
        postgres_url, options=DatabaseOptions(max_connections=1, statement_timeout=0.5)
    )
    async with manager:
        started = time.monotonic()
        result = await manager.execute_query("SELECT pg_sleep(5)")
        elapsed = time.monotonic() - started
        assert result.error_type == "timeout"
        assert elapsed < 0.5 + 1.0
        after = await manager.execute_query("SELECT 7 AS seven")
        assert after.data == [{"seven": 7}]


async def test_request_deadline_cancels_the_statement(
    pg_manager: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection
) -> None:
    marker = f"deadline-{time.monotonic_ns()}"
    started = time.monotonic()
    result = await pg_manager.execute_query(
        f"SELECT pg_sleep(10), '{marker}'", deadline=Deadline(0.3)
    )
    assert result.error_type == "timeout"
    assert time.monotonic() - started < 1.3

    async def gone() -> bool:
        running = await pg_raw.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active'"
            " AND pid <> pg_backend_pid()",
            f"%{marker}%",
        )
        return running == 0

    assert await poll(gone, timeout=3)


async def test_unreachable_server_fails_within_acquire_timeout() -> None:
    port = free_port()
    manager = AsyncPostgreSQLManager(
        f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/test",
        options=DatabaseOptions(acquire_timeout=1, min_connections=0),
    )
    async with manager:
        started = time.monotonic()
        result = await manager.execute_query("SELECT 1")
        assert time.monotonic() - started < 1 + 1
    assert result.error_type == "connection_error"
    assert "s3cret-pw" not in (result.error or "")
    assert "***" in (result.error or "")


async def test_blackholed_connect_is_bounded_by_acquire_timeout() -> None:
    # A listening socket that never answers the startup packet.
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        manager = AsyncPostgreSQLManager(
            f"postgresql://postgres@127.0.0.1:{port}/test",
            options=DatabaseOptions(acquire_timeout=0.5, min_connections=0),
        )
        async with manager:
            started = time.monotonic()
            result = await manager.execute_query("SELECT 1")
            assert time.monotonic() - started < 0.5 + 1
        assert result.error_type == "connection_error"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_pool_exhausted_when_acquire_times_out(postgres_url: str) -> None:
    manager = AsyncPostgreSQLManager(
        postgres_url, options=DatabaseOptions(max_connections=1, acquire_timeout=0.2)
    )
    async with manager:
        slow = asyncio.create_task(manager.execute_query("SELECT pg_sleep(1)"))
        assert await poll(lambda: manager.pool_stats()["in_use"] == 1)
        result = await manager.execute_query("SELECT 1")
        assert result.error_type == "pool_exhausted"
        assert (await slow).success


async def test_cancelled_query_leaves_nothing_behind(
    pg_manager: AsyncPostgreSQLManager, pg_raw: asyncpg.Connection
) -> None:
    marker = f"cancel-{time.monotonic_ns()}"
    task = asyncio.create_task(pg_manager.execute_query(f"SELECT pg_sleep(30), '{marker}'"))

    async def running() -> bool:
        count = await pg_raw.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active'"
            " AND pid <> pg_backend_pid()",
            f"%{marker}%",
        )
        return count == 1

    assert await poll(running)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await poll(lambda: pg_manager.pool_stats()["in_use"] == 0)
    assert await poll(lambda: _not(running), timeout=3)
    # The connection that was cancelled is usable again.
    result = await pg_manager.execute_query("SELECT 1 AS ok")
    assert result.data == [{"ok": 1}]


async def _not(check: object) -> bool:
    return not await check()  # type: ignore[operator]


async def test_transaction_commits_and_rolls_back(
    pg_manager: AsyncPostgreSQLManager, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    async with pg_manager.transaction() as tx:
        await tx.execute_query(f"INSERT INTO {pg_table} (name) VALUES ($1)", ["kept"])
    assert tx.status == "committed"

    with pytest.raises(RuntimeError):
        async with pg_manager.transaction() as tx:
            await tx.execute_query(f"INSERT INTO {pg_table} (name) VALUES ($1)", ["lost"])
            raise RuntimeError("boom")

    async with pg_manager.transaction() as tx:
        await tx.execute_query(f"INSERT INTO {pg_table} (name) VALUES ($1)", ["lost too"])
        failed = await tx.execute_query("SELECT * FROM no_such_table")
        assert not failed.success
    assert tx.status == "rolled_back"

    names = [r["name"] for r in await pg_raw.fetch(f"SELECT name FROM {pg_table}")]
    assert names == ["kept"]
    assert await poll(lambda: pg_manager.pool_stats()["in_use"] == 0)


async def test_read_only_is_enforced_by_the_database(
    pg_manager: AsyncPostgreSQLManager, table_name: str, pg_raw: asyncpg.Connection
) -> None:
    result = await pg_manager.execute_query(f"CREATE TABLE {table_name} (id int)", read_only=True)
    assert result.error_type == "read_only"
    exists = await pg_raw.fetchval("SELECT to_regclass($1)", table_name)
    assert exists is None


async def test_max_rows_truncates(pg_manager: AsyncPostgreSQLManager) -> None:
    result = await pg_manager.execute_query("SELECT generate_series(1, 50) AS n", max_rows=10)
    assert result.truncated
    assert len(result.data) == 10


async def test_fifo_handoff_serves_waiters_in_order(postgres_url: str) -> None:
    manager = AsyncPostgreSQLManager(postgres_url, options=DatabaseOptions(max_connections=1))
    order: list[int] = []

    async def worker(i: int) -> None:
        await manager.execute_query("SELECT pg_sleep(0.01)")
        order.append(i)

    async with manager:
        holder = asyncio.create_task(manager.execute_query("SELECT pg_sleep(0.5)"))
        assert await poll(lambda: manager.pool_stats()["in_use"] == 1)
        workers = []
        for i in range(5):
            workers.append(asyncio.create_task(worker(i)))
            assert await poll(lambda n=i: manager.pool_stats()["waiting"] == n + 1)
        await asyncio.gather(holder, *workers)
    assert order == [0, 1, 2, 3, 4]


async def test_orchestrator_and_context_manager(postgres_url: str) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_database_manager("main_db", DatabaseType.POSTGRESQL, postgres_url)
        result = await orchestrator.execute_database_operation(
            "main_db", "SELECT $1::text AS v", {"1": "x"}
        )
        assert result.data == [{"v": "x"}]
        async with get_database_connection("main_db") as db_manager:
            again = await db_manager.execute_query("SELECT 2 AS two")
        assert again.data == [{"two": 2}]
        unknown = await orchestrator.execute_database_operation("nope", "SELECT 1")
        assert unknown.error_type == "not_found"
        stats = orchestrator.get_stats()["databases"]["main_db"]
        assert stats["count"] == 2
        health = await orchestrator.health_check()
        assert health["main_db"]["status"] == "up"


async def test_seed_002_connection_pool(postgres_url: str, pg_table: str) -> None:
    pool = DatabaseConnectionPool(postgres_url, pool_size=5)
    await pool.initialize()
    try:
        async with pool.get_connection() as conn:
            async with conn.transaction():
                new_id = await conn.fetchval(
                    f"INSERT INTO {pg_table} (name) VALUES ($1) RETURNING id", "post"
                )
        conn = await pool.get_connection()
        row = await conn.fetchrow(f"SELECT name FROM {pg_table} WHERE id = $1", new_id)
        await pool.release_connection(conn)
        assert dict(row) == {"name": "post"}
        assert await poll(lambda: pool.stats()["in_use"] == 0)
    finally:
        await pool.close()


async def test_closed_manager_cannot_reopen(postgres_url: str) -> None:
    manager = AsyncPostgreSQLManager(postgres_url)
    await manager.initialize_pool()
    await manager.close()
    await manager.close()  # idempotent
    result = await manager.execute_query("SELECT 1")
    assert result.error_type == "closed"


async def test_parameter_encoding_error_leaves_no_locks_behind(
    pg_manager: AsyncPostgreSQLManager, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    await pg_raw.execute(f"INSERT INTO {pg_table} (id, name) VALUES (1, 'a')")
    result = await pg_manager.execute_query(
        # A number would be read as text now (iogate.core.coerce); an object cannot be.
        f"UPDATE {pg_table} SET name = $2 WHERE id = $1",
        [1, {"not": "text"}],
    )
    assert result.error_type == "query_error"
    assert await poll(lambda: pg_manager.pool_stats()["in_use"] == 0)
    # No connection is left mid-request holding the table's lock.
    async with pg_raw.transaction():
        await pg_raw.execute(f"LOCK TABLE {pg_table} IN ACCESS EXCLUSIVE MODE NOWAIT")
