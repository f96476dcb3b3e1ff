"""Every statement is one recorded operation, however it was grouped (issue 15).

Statements run inside ``manager.transaction()`` used to reach neither the
manager's stats nor the operation events: ``/stats`` and ``/metrics``
depended on how the work was grouped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iogate import AsyncPostgreSQLManager, AsyncSQLiteManager
from iogate.core import events
from iogate.core.events import Event, OperationEvent
from iogate.core.sqlguard import Access
from iogate.orchestrator import AsyncOperationOrchestrator, DatabaseType
from iogate.orchestrator.batch import execute_batch
from tests.conftest import poll


@pytest.fixture
def seen() -> Iterator[list[OperationEvent]]:
    received: list[OperationEvent] = []

    def hook(event: Event) -> None:
        if isinstance(event, OperationEvent):
            received.append(event)

    events.add_hook(hook)
    try:
        yield received
    finally:
        events.remove_hook(hook)


async def test_sqlite_statements_in_a_transaction_are_counted(
    sqlite_manager: AsyncSQLiteManager, seen: list[OperationEvent]
) -> None:
    await sqlite_manager.execute_query("CREATE TABLE t (x INTEGER)")
    before = sqlite_manager.get_stats()["count"]
    seen.clear()
    async with sqlite_manager.transaction() as tx:
        for x in range(3):
            result = await tx.execute_query("INSERT INTO t VALUES (?)", [x])
            assert result.success, result.error
            assert result.resource == sqlite_manager.name
    assert sqlite_manager.get_stats()["count"] == before + 3
    mine = [e for e in seen if e.resource == sqlite_manager.name]
    assert [(e.kind, e.backend, e.operation) for e in mine] == [("database", "sqlite", "query")] * 3


async def test_a_failed_statement_in_a_transaction_counts_as_an_error(
    sqlite_manager: AsyncSQLiteManager,
) -> None:
    before = sqlite_manager.get_stats()
    async with sqlite_manager.transaction() as tx:
        result = await tx.execute_query("SELECT * FROM no_such_table")
    assert not result.success
    after = sqlite_manager.get_stats()
    assert after["count"] == before["count"] + 1
    assert after["errors"] == before["errors"] + 1


async def test_postgres_statements_in_a_transaction_are_counted(
    pg_manager: AsyncPostgreSQLManager, seen: list[OperationEvent]
) -> None:
    table = f"rec_{uuid.uuid4().hex[:8]}"
    await pg_manager.execute_query(f"CREATE TABLE {table} (x int)")
    try:
        before = pg_manager.get_stats()["count"]
        seen.clear()
        async with pg_manager.transaction() as tx:
            await tx.execute_query(f"INSERT INTO {table} VALUES ($1)", [1])
            await tx.execute_query(f"SELECT count(*) FROM {table}")
        assert pg_manager.get_stats()["count"] == before + 2
        assert len([e for e in seen if e.resource == pg_manager.name]) == 2
    finally:
        await pg_manager.execute_query(f"DROP TABLE {table}")


async def test_sqlite_statements_grouped_by_a_batch_are_counted(
    tmp_path: Path, seen: list[OperationEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_database_manager(
            "lite", DatabaseType.SQLITE, str(tmp_path / "batch.db")
        )
        manager = orchestrator.databases["lite"]
        assert isinstance(manager, AsyncSQLiteManager)
        created = await manager.execute_query("CREATE TABLE t (x INTEGER)")
        assert created.success, created.error
        groups: list[int] = []
        execute_many = manager.execute_many

        async def counted(query: str, params_list: list[Any], **kwargs: Any) -> Any:
            groups.append(len(params_list))
            return await execute_many(query, params_list, **kwargs)

        monkeypatch.setattr(manager, "execute_many", counted)
        before = manager.get_stats()["count"]
        seen.clear()
        insert = {"type": "database", "db_name": "lite", "query": "INSERT INTO t VALUES (?)"}
        results = await execute_batch(orchestrator, [{**insert, "params": [x]} for x in range(5)])
        assert [r.success for r in results] == [True] * 5
        assert groups == [5]  # one group, run by execute_many
        assert manager.get_stats()["count"] == before + 5
        statements = [e for e in seen if e.resource == "lite" and e.operation == "query"]
        assert [(e.kind, e.backend, e.error_type) for e in statements] == [
            ("database", "sqlite", None)
        ] * 5


@pytest.mark.parametrize(
    "insert",
    ["INSERT INTO {table} VALUES ($1)", "INSERT INTO {table} SELECT $1::int"],
    ids=["pipelined", "one-by-one"],
)
async def test_postgres_execute_many_counts_each_statement(
    pg_manager: AsyncPostgreSQLManager, seen: list[OperationEvent], insert: str
) -> None:
    """A batch group's statements are the manager's operations, one each."""
    table = f"rec_{uuid.uuid4().hex[:8]}"
    await pg_manager.execute_query(f"CREATE TABLE {table} (x int)")
    try:
        before = pg_manager.get_stats()["count"]
        seen.clear()
        results = await pg_manager.execute_many(insert.format(table=table), [[x] for x in range(5)])
        assert results is not None
        assert [r.rows_affected for r in results] == [1] * 5
        assert all(r.resource == pg_manager.name for r in results)
        assert pg_manager.get_stats()["count"] == before + 5
        mine = [e for e in seen if e.resource == pg_manager.name]
        assert [(e.backend, e.operation) for e in mine] == [("postgresql", "query")] * 5
    finally:
        await pg_manager.execute_query(f"DROP TABLE {table}")


async def test_postgres_execute_many_refused_by_the_guard_counts_each_error(
    pg_manager: AsyncPostgreSQLManager,
) -> None:
    before = pg_manager.get_stats()
    results = await pg_manager.execute_many(
        "DELETE FROM pg_class WHERE false", [[], []], guard=Access.READ
    )
    assert results is not None
    assert [r.error_type for r in results] == ["forbidden_statement"] * 2
    after = pg_manager.get_stats()
    assert after["count"] == before["count"] + 2
    assert after["errors"] == before["errors"] + 2


async def test_postgres_transaction_status_after_a_rollback(
    pg_manager: AsyncPostgreSQLManager,
) -> None:
    """A block that raised is rolled back, and the exception is the caller's."""
    with pytest.raises(LookupError):
        async with pg_manager.transaction() as tx:
            assert (await tx.execute_query("SELECT 1")).success
            raise LookupError("the caller's own error")
    assert tx.status == "rolled_back"
    # The connection comes back (reset first: the block failed).
    assert await poll(lambda: pg_manager.pool_stats()["in_use"] == 0)
