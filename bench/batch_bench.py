"""Batch grouping vs the same operations awaited one by one (loopback servers)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from iogate.orchestrator import AsyncOperationOrchestrator, DatabaseType
from iogate.orchestrator.batch import execute_batch

PG = os.environ.get("IOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("IOGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
N = 1000


async def timed(coro):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = await coro
    return time.perf_counter() - started, result


async def main() -> None:
    table = f"bench_{uuid.uuid4().hex[:8]}"
    async with AsyncOperationOrchestrator() as orch:
        await orch.add_database_manager("pg", DatabaseType.POSTGRESQL, PG, max_connections=10)
        await orch.add_database_manager("redis", DatabaseType.REDIS, REDIS)
        await orch.execute_database_operation("pg", f"CREATE TABLE {table} (name text, n int)")
        try:
            insert = f"INSERT INTO {table} (name, n) VALUES ($1, $2)"
            sql_ops = [
                {"type": "database", "db_name": "pg", "query": insert, "params": [f"r{i}", i]}
                for i in range(N)
            ]
            kv_ops = [
                {
                    "type": "database",
                    "db_name": "redis",
                    "query": f"bench:{i}",
                    "params": {"operation": "set", "value": i},
                }
                for i in range(N)
            ]

            async def one_by_one(ops):  # type: ignore[no-untyped-def]
                for op in ops:
                    r = await orch.execute_database_operation(
                        op["db_name"], op["query"], op["params"]
                    )
                    assert r.success, r.error

            for label, ops in (("redis set", kv_ops), ("pg insert", sql_ops)):
                for _ in range(1):  # warm-up
                    await one_by_one(ops[:50])
                serial, _ = await timed(one_by_one(ops))
                batch, results = await timed(execute_batch(orch, ops))
                assert all(r.success for r in results)
                ungrouped, _ = await timed(execute_batch(orch, ops, group=False))
                print(
                    f"{label:10s} x{N}: one-by-one {serial * 1000:8.1f} ms"
                    f" | batch {batch * 1000:7.1f} ms ({serial / batch:5.1f}x)"
                    f" | batch without grouping {ungrouped * 1000:7.1f} ms"
                )
        finally:
            await orch.execute_database_operation("pg", f"DROP TABLE {table}")
            await orch.execute_database_operation(
                "redis", "k", {"operation": "delete", "keys": [f"bench:{i}" for i in range(N)]}
            )


asyncio.run(main())
