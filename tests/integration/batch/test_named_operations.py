"""Named operations on PostgreSQL, the local upstream and Python, with a Redis cache."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from iogate.backends.memory import AsyncMemoryManager
from iogate.core.events import Event, OperationEvent, add_hook, remove_hook
from iogate.core.result import Result
from iogate.orchestrator import AsyncOperationOrchestrator, DatabaseType
from iogate.orchestrator.batch import execute_batch
from iogate.orchestrator.operations import (
    TAG_PREFIX,
    OperationCache,
    _cache_key,
    execute_named_operation,
    python_operations,
    register_operation,
    registry_of,
)

from .conftest import Upstream


class Names(str):
    """The table name; operations are suffixed with it so cache keys never collide."""

    def __call__(self, operation: str) -> str:
        return f"{operation}_{self}"


@pytest.fixture
def ops(orchestrator: AsyncOperationOrchestrator, pg_table: str, prefix: str) -> Names:
    tag = f"{prefix}row:{{id}}"
    register_operation(
        orchestrator,
        f"get_row_{pg_table}",
        database="main_db",
        query=f"SELECT name, n FROM {pg_table} WHERE id = $1",
        params=["id"],
        cache=OperationCache(database="redis_cache", ttl=60, tags=(tag,)),
    )
    register_operation(
        orchestrator,
        f"rename_row_{pg_table}",
        database="main_db",
        query=f"UPDATE {pg_table} SET name = $2 WHERE id = $1",
        params=["id", "name"],
        cache=OperationCache(database="redis_cache", ttl=60, invalidates=(tag,)),
    )
    register_operation(
        orchestrator,
        f"send_event_{pg_table}",
        api="external_api",
        method="post",
        endpoint="/users/{user_id}/events",
        params=["user_id", "event"],
    )
    return Names(pg_table)


async def test_missing_and_extra_parameters_are_named(
    orchestrator: AsyncOperationOrchestrator, ops: Names
) -> None:
    missing = await execute_named_operation(orchestrator, ops("rename_row"), {"id": 1})
    assert missing.error_type == "invalid_request"
    assert "missing parameter 'name'" in (missing.error or "")
    extra = await execute_named_operation(orchestrator, ops("get_row"), {"id": 1, "drop": "x"})
    assert "unexpected parameter 'drop'" in (extra.error or "")
    unknown = await execute_named_operation(orchestrator, "nope", {})
    assert unknown.error_type == "not_found"


async def test_cache_hit_and_tag_invalidation(
    orchestrator: AsyncOperationOrchestrator, ops: Names, pg_raw: asyncpg.Connection
) -> None:
    row_id = await pg_raw.fetchval(f"INSERT INTO {ops} (name, n) VALUES ('a', 1) RETURNING id")
    seen: list[OperationEvent] = []

    def hook(event: Event) -> None:
        if isinstance(event, OperationEvent) and event.kind == "operation":
            seen.append(event)

    add_hook(hook)
    try:
        first = await execute_named_operation(orchestrator, ops("get_row"), {"id": row_id})
        # Changed behind iogate's back: the cached answer is still served.
        await pg_raw.execute(f"UPDATE {ops} SET name = 'b' WHERE id = $1", row_id)
        second = await execute_named_operation(orchestrator, ops("get_row"), {"id": row_id})
        renamed = await execute_named_operation(
            orchestrator, ops("rename_row"), {"id": row_id, "name": "c"}
        )
        third = await execute_named_operation(orchestrator, ops("get_row"), {"id": row_id})
    finally:
        remove_hook(hook)
    assert first.data == [{"name": "a", "n": 1}]
    assert second.data == [{"name": "a", "n": 1}]
    assert renamed.rows_affected == 1
    assert third.data == [{"name": "c", "n": 1}]
    assert [e.operation for e in seen] == [
        ops(n) for n in ("get_row", "get_row", "rename_row", "get_row")
    ]
    assert all(e.resource == "main_db" and e.error_type is None for e in seen)


async def test_api_operation_fills_the_endpoint_safely(
    orchestrator: AsyncOperationOrchestrator, ops: Names, upstream: Upstream
) -> None:
    result = await execute_named_operation(
        orchestrator, ops("send_event"), {"user_id": "ada lovelace", "event": "login"}
    )
    assert result.success, result.error
    assert upstream.requests[-1]["path"] == "/v1/users/ada lovelace/events"
    assert upstream.requests[-1]["body"] == {"event": "login"}
    # A value cannot climb out of its segment: the API manager refuses it unsent.
    calls = len(upstream.requests)
    escaped = await execute_named_operation(
        orchestrator, ops("send_event"), {"user_id": "../admin", "event": "login"}
    )
    assert escaped.error_type == "invalid_request"
    assert len(upstream.requests) == calls


async def test_python_operation_and_named_operations_in_a_batch(
    orchestrator: AsyncOperationOrchestrator, ops: Names, pg_raw: asyncpg.Connection
) -> None:
    @python_operations.operation("double_row_count")
    async def double_row_count(orch: AsyncOperationOrchestrator, factor: int = 2) -> Any:
        counted = await orch.execute_database_operation(
            "main_db", f"SELECT count(*) AS c FROM {ops}"
        )
        if not counted.success:
            return counted
        return str(counted.data[0]["c"] * factor)

    assert "double_row_count" in registry_of(orchestrator)
    row_id = await pg_raw.fetchval(f"INSERT INTO {ops} (name, n) VALUES ('a', 1) RETURNING id")
    results = await execute_batch(
        orchestrator,
        [
            {"type": "operation", "name": "double_row_count", "params": {"factor": 3}},
            {
                "type": "operation",
                "name": ops("rename_row"),
                "params": {"id": row_id, "name": {"$ref": "0.data"}},
            },
            {"type": "operation", "name": ops("rename_row"), "params": {"id": row_id}},
        ],
    )
    assert isinstance(results[0], Result)
    assert results[0].data == "3"
    assert results[1].success, results[1].error
    assert results[2].error_type == "invalid_request"
    assert await pg_raw.fetchval(f"SELECT name FROM {ops}") == "3"


async def test_a_write_that_invalidates_runs_every_time_and_is_never_cached(
    tmp_path: Path,
) -> None:
    path = tmp_path / "counters.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        db.execute("INSERT INTO counters VALUES (1, 0)")
    async with AsyncOperationOrchestrator() as orch:
        await orch.add_database_manager("main", DatabaseType.SQLITE, str(path))
        await orch.add_database_manager("cache", DatabaseType.MEMORY, "")
        register_operation(
            orch,
            "get_counter",
            database="main",
            query="SELECT n FROM counters WHERE id = ?",
            params=["id"],
            cache=OperationCache(database="cache", ttl=60, tags=("counter:{id}",)),
        )
        bump = register_operation(
            orch,
            "bump_counter",
            database="main",
            query="UPDATE counters SET n = n + 1 WHERE id = ?",
            params=["id"],
            # tags too: a write's output is still never stored under them.
            cache=OperationCache(
                database="cache", ttl=60, tags=("bumps",), invalidates=("counter:{id}",)
            ),
        )
        seen = []
        for _ in range(3):  # the same write, the same parameters: it runs each time
            bumped = await execute_named_operation(orch, "bump_counter", {"id": 1})
            assert bumped.success, bumped.error
            assert bumped.rows_affected == 1
            read = await execute_named_operation(orch, "get_counter", {"id": 1})
            seen.append(read.data)
        cached = await execute_named_operation(orch, "get_counter", {"id": 1})
        cache = orch.databases["cache"]
        assert isinstance(cache, AsyncMemoryManager)
        get_counter = registry_of(orch).get("get_counter")
        assert get_counter is not None
        keys = [_cache_key(op, {"id": 1}) for op in (get_counter, bump)]
        stored = await cache.execute_query("k", {"operation": "exists", "keys": keys})
        tagged = await cache.execute_query(f"{TAG_PREFIX}bumps", {"operation": "exists"})
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT n FROM counters").fetchone() == (3,)
    assert seen == [[{"n": 1}], [{"n": 2}], [{"n": 3}]]  # each read after an invalidation
    assert cached.data == [{"n": 3}]  # reads are still cached
    assert stored.data == 1  # get_counter's entry; none of bump_counter's
    assert tagged.data == 0
    assert bump.describe()["cached"] is False
