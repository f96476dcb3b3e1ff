"""Transactions and atomic batches on PostgreSQL: all or nothing, checked by
querying afterwards, including a process killed with SIGKILL mid-batch."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap

import asyncpg
import pytest

from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.orchestrator.batch import execute_batch, run_transaction
from tests.conftest import poll


async def test_transaction_whose_third_statement_fails_leaves_no_trace(
    orchestrator: AsyncOperationOrchestrator, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    queries = [
        {
            "query": f"INSERT INTO {pg_table} (name, n) VALUES ($1, $2)",
            "params": {"1": "a", "2": 1},
        },
        {"query": f"INSERT INTO {pg_table} (name, n) VALUES ($1, $2)", "params": ["b", 2]},
        # Fails on the server (division by zero) after two successful inserts.
        {"query": f"INSERT INTO {pg_table} (name, n) VALUES ($1, $2 / 0)", "params": ["c", 3]},
    ]
    result = await run_transaction(orchestrator, "main_db", queries)
    assert not result.success
    assert result.error_type == "query_error"
    assert "statement 2 failed" in (result.error or "")
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 0

    queries[2] = {"query": f"INSERT INTO {pg_table} (name, n) VALUES ($1, $2)", "params": ["c", 3]}
    ok = await run_transaction(orchestrator, "main_db", queries)
    assert ok.success, ok.error
    assert ok.rows_affected == 3
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 3


async def test_transaction_operation_in_a_batch_with_returning(
    orchestrator: AsyncOperationOrchestrator, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    ops = [
        {
            "type": "transaction",
            "db_name": "main_db",
            "queries": [
                {"query": f"INSERT INTO {pg_table} (name) VALUES ('x') RETURNING id"},
                {"query": f"SELECT count(*) AS n FROM {pg_table}"},
            ],
        },
        {
            "type": "database",
            "db_name": "main_db",
            "query": f"UPDATE {pg_table} SET n = $1 WHERE id = $2",
            "params": [7, {"$ref": "0.data.0.0.id"}],
        },
        {"type": "transaction", "db_name": "redis_cache", "queries": [{"query": "k"}]},
    ]
    results = await execute_batch(orchestrator, ops)
    assert results[0].success
    assert results[0].data[1] == [{"n": 1}]
    assert results[1].rows_affected == 1
    assert results[2].error_type == "invalid_request"
    assert await pg_raw.fetchval(f"SELECT n FROM {pg_table}") == 7


async def test_atomic_batch_commits_or_rolls_back_everything(
    orchestrator: AsyncOperationOrchestrator, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    insert = f"INSERT INTO {pg_table} (name, n) VALUES ($1, $2) RETURNING id"
    ops = [
        {"type": "database", "db_name": "main_db", "query": insert, "params": ["a", 1]},
        {
            "type": "database",
            "db_name": "main_db",
            "query": f"UPDATE {pg_table} SET n = n + 10 WHERE id = $1",
            "params": [{"$ref": "0.data.0.id"}],
        },
        {"type": "database", "db_name": "main_db", "query": insert, "params": ["b", 2]},
    ]
    results = await execute_batch(orchestrator, ops, atomic=True)
    assert all(r.success for r in results), [r.error for r in results]
    assert await pg_raw.fetchval(f"SELECT sum(n) FROM {pg_table}") == 13

    divide = f"INSERT INTO {pg_table} (name, n) VALUES ($1, $2 / 0)"
    failing = [
        *ops,
        {"type": "database", "db_name": "main_db", "query": divide, "params": ["c", 1]},
    ]
    results = await execute_batch(orchestrator, failing, atomic=True)
    assert [r.error_type for r in results] == ["rolled_back"] * 3 + ["query_error"]
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 2


async def test_atomic_refuses_mixed_batches(
    orchestrator: AsyncOperationOrchestrator, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    ops = [
        {
            "type": "database",
            "db_name": "main_db",
            "query": f"INSERT INTO {pg_table} (name) VALUES ('a')",
        },
        {"type": "api", "api_name": "external_api", "method": "POST", "endpoint": "/x"},
    ]
    results = await execute_batch(orchestrator, ops, atomic=True)
    assert all(r.error_type == "invalid_request" for r in results)
    assert "cannot be rolled back" in (results[0].error or "")
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 0


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from iogate.orchestrator import AsyncOperationOrchestrator, DatabaseType
    from iogate.orchestrator.batch import execute_batch

    async def main(url, table, n):
        async with AsyncOperationOrchestrator() as orch:
            await orch.add_database_manager("db", DatabaseType.POSTGRESQL, url)
            insert = f"INSERT INTO {table} (name, n) VALUES ($1, $2)"
            ops = [{"type": "database", "db_name": "db", "query": insert, "params": [f"r{i}", i]}
                   for i in range(n)]
            # A pause in the middle, so the kill lands inside the transaction.
            pause = {"type": "database", "db_name": "db", "query": "SELECT pg_sleep(0.5)"}
            ops.insert(n // 2, pause)
            print("go", flush=True)
            results = await execute_batch(orch, ops, atomic=True)
            print("done", all(r.success for r in results), flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


@pytest.mark.timeout(60)
async def test_sigkill_during_atomic_batch_leaves_all_or_nothing(
    postgres_url: str, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    rows = 40
    outcomes = []
    for trial in range(4):
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CHILD,
            postgres_url,
            pg_table,
            str(rows),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 20)
        assert line.strip() == b"go"
        killed = trial < 3  # the last trial runs to completion
        if killed:
            # Kill once the first half is inserted (seen from pg_stat_activity).
            async def sleeping() -> bool:
                found: int = await pg_raw.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(0.5)%'"
                    " AND state = 'active'"
                )
                return found > 0

            await poll(sleeping, timeout=5, interval=0.01)
            child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.wait(), 20)
        count = await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}")
        outcomes.append((killed, count))
        await pg_raw.execute(f"TRUNCATE {pg_table}")
    for killed, count in outcomes:
        assert count in (0, rows)
        assert count == (0 if killed else rows), outcomes
