"""Grouped execution keeps per-operation results: Redis pipelines and
repeated INSERTs on PostgreSQL (speed is measured by the benchmark suite)."""

from __future__ import annotations

from typing import Any

import asyncpg

from iogate.core.events import Event, OperationEvent, PoolEvent, add_hook, remove_hook
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.orchestrator.batch import execute_batch


def _events() -> tuple[list[OperationEvent], Any]:
    seen: list[OperationEvent] = []

    def hook(event: Event) -> None:
        if isinstance(event, OperationEvent):
            seen.append(event)

    add_hook(hook)
    return seen, hook


async def test_redis_sets_go_in_pipelines_with_per_operation_results(
    orchestrator: AsyncOperationOrchestrator, prefix: str
) -> None:
    ops: list[dict[str, Any]] = [
        {
            "type": "database",
            "db_name": "redis_cache",
            "query": f"{prefix}{i}",
            "params": {"operation": "set", "value": {"i": i}, "ttl": 60},
        }
        for i in range(1000)
    ]
    ops.append(
        {
            "type": "database",
            "db_name": "redis_cache",
            "query": f"{prefix}5",
            "params": {"operation": "get"},
        }
    )
    seen, hook = _events()
    try:
        results = await execute_batch(orchestrator, ops)
    finally:
        remove_hook(hook)
    assert all(r.success for r in results)
    assert [r.data for r in results[:1000]] == [True] * 1000
    # One pipeline of 1000 and the get (alone or in its own group): at most 2 round trips.
    redis_events = [e for e in seen if e.resource == "redis_cache"]
    assert 1 <= len(redis_events) <= 2
    got = await orchestrator.execute_database_operation(
        "redis_cache", f"{prefix}999", {"operation": "get"}
    )
    assert got.data == '{"i":999}'
    await orchestrator.execute_database_operation(
        "redis_cache", "k", {"operation": "delete", "keys": [f"{prefix}{i}" for i in range(1000)]}
    )


async def test_failed_pipeline_entry_stays_its_own(
    orchestrator: AsyncOperationOrchestrator, prefix: str
) -> None:
    await orchestrator.execute_database_operation(
        "redis_cache", f"{prefix}text", {"operation": "set", "value": "not a number"}
    )
    ops = [
        {
            "type": "database",
            "db_name": "redis_cache",
            "query": f"{prefix}a",
            "params": {"operation": "set", "value": "1"},
        },
        {
            "type": "database",
            "db_name": "redis_cache",
            "query": f"{prefix}text",
            "params": {"operation": "incr"},
        },
        {
            "type": "database",
            "db_name": "redis_cache",
            "query": f"{prefix}a",
            "params": {"operation": "incr"},
        },
        {
            "type": "database",
            "db_name": "redis_cache",
            "query": f"{prefix}missing",
            "params": {"operation": "get"},
        },
    ]
    results = await execute_batch(orchestrator, ops, concurrency=1)
    assert [r.success for r in results] == [True, False, True, True]
    assert results[1].error_type == "query_error"
    assert results[2].data == 2
    assert results[3].data is None
    await orchestrator.execute_database_operation(
        "redis_cache", "k", {"operation": "delete", "keys": [f"{prefix}a", f"{prefix}text"]}
    )


async def test_repeated_insert_runs_as_one_group(
    orchestrator: AsyncOperationOrchestrator, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    insert = f"INSERT INTO {pg_table} (name, n) VALUES ($1, $2)"
    ops = [
        {
            "type": "database",
            "db_name": "main_db",
            "query": insert,
            "params": {"1": f"r{i}", "2": i},
        }
        for i in range(1000)
    ]
    seen, hook = _events()
    checkouts: list[PoolEvent] = []

    def count_checkouts(event: Event) -> None:
        if isinstance(event, PoolEvent) and event.resource == "main_db":
            checkouts.append(event)

    add_hook(count_checkouts)
    try:
        results = await execute_batch(orchestrator, ops)
    finally:
        remove_hook(hook)
        remove_hook(count_checkouts)
    assert all(r.success and r.rows_affected == 1 for r in results)
    assert all(r.resource == "main_db" for r in results)
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {pg_table}") == 1000
    # One grouped execution in one transaction (every row has the same
    # xmin), not 1000 single statements each committing on its own.
    assert await pg_raw.fetchval(f"SELECT count(DISTINCT xmin::text) FROM {pg_table}") == 1
    # The group is not an operation of its own: statements are the
    # manager's operations (tests/integration/test_recording.py).
    assert "execute_many" not in {e.operation for e in seen}
    # Every statement is one of the manager's operations (issue 15)...
    assert [e.operation for e in seen if e.resource == "main_db"].count("query") == 1000
    # ... run as one grouped execution: one connection checkout, not 1000.
    assert len(checkouts) == 1


async def test_a_failing_row_in_a_group_fails_alone(
    orchestrator: AsyncOperationOrchestrator, users_table: str, pg_raw: asyncpg.Connection
) -> None:
    insert = f"INSERT INTO {users_table} (email) VALUES ($1)"
    emails = [f"u{i}@x.io" for i in range(20)]
    emails[7] = emails[3]  # a unique violation, refused by the server
    ops = [
        {"type": "database", "db_name": "main_db", "query": insert, "params": [email]}
        for email in emails
    ]
    results = await execute_batch(orchestrator, ops)
    assert [i for i, r in enumerate(results) if not r.success] == [7]
    assert results[7].error_type == "query_error"
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {users_table}") == 19


async def test_repeated_update_keeps_its_own_rows_affected(
    orchestrator: AsyncOperationOrchestrator, pg_table: str, pg_raw: asyncpg.Connection
) -> None:
    await pg_raw.executemany(
        f"INSERT INTO {pg_table} (name, n) VALUES ($1, $2)", [("a", 1), ("a", 2), ("b", 3)]
    )
    update = f"UPDATE {pg_table} SET n = n + 10 WHERE name = $1"
    ops = [
        {"type": "database", "db_name": "main_db", "query": update, "params": [name]}
        for name in ("a", "b", "zzz")
    ]
    results = await execute_batch(orchestrator, ops)
    assert [r.rows_affected for r in results] == [2, 1, 0]
    assert await pg_raw.fetchval(f"SELECT sum(n) FROM {pg_table}") == 36


async def test_execute_many_is_all_or_nothing(
    orchestrator: AsyncOperationOrchestrator, users_table: str, pg_raw: asyncpg.Connection
) -> None:
    manager = orchestrator.databases["main_db"]
    insert = f"INSERT INTO {users_table} (email) VALUES ($1)"
    assert await manager.execute_many(insert, [["x@x.io"], ["y@x.io"], ["x@x.io"]]) is None
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {users_table}") == 0
    done = await manager.execute_many(insert, [["x@x.io"], ["y@x.io"]])
    assert done is not None
    assert [r.rows_affected for r in done] == [1, 1]
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {users_table}") == 2
