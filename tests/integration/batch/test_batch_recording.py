"""A batch's statements are counted once each, however the batch ran them (issue 15).

The manager that runs a statement records it (stats and an OperationEvent):
alone, in a SQL group (``execute_many`` or one transaction), in an atomic
batch or in a ``transaction`` operation. The batch adds no record of its own,
so ``/stats`` and ``/metrics`` do not depend on how the work was batched: a
batch of N statements is N operations of the manager, never N + 1 (an extra
``execute_many``/``transaction`` event) nor 1 (the group counted once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from iogate.core import events
from iogate.core.events import Event, OperationEvent
from iogate.orchestrator import AsyncOperationOrchestrator, DatabaseType
from iogate.orchestrator.batch import execute_batch, plan_batch
from iogate.orchestrator.batch.grouping import Group, plan_units

INSERT = {"sqlite": "INSERT INTO {t} (x) VALUES (?)", "pg": "INSERT INTO {t} (x) VALUES ($1)"}


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


@pytest.fixture
async def orchestrator(
    tmp_path: Path, postgres_url: str, pg_raw: asyncpg.Connection, table_name: str
) -> AsyncIterator[AsyncOperationOrchestrator]:
    await pg_raw.execute(f"CREATE TABLE {table_name} (x int)")
    try:
        async with AsyncOperationOrchestrator() as orch:
            await orch.add_database_manager("sqlite", DatabaseType.SQLITE, str(tmp_path / "rec.db"))
            await orch.add_database_manager(
                "pg", DatabaseType.POSTGRESQL, postgres_url, max_connections=2
            )
            created = await orch.execute_database_operation(
                "sqlite", f"CREATE TABLE {table_name} (x INTEGER)"
            )
            assert created.success, created.error
            yield orch
    finally:
        await pg_raw.execute(f"DROP TABLE IF EXISTS {table_name}")


def _inserts(db: str, table: str, count: int) -> list[dict[str, Any]]:
    query = INSERT[db].format(t=table)
    return [
        {"type": "database", "db_name": db, "query": query, "params": [x]} for x in range(count)
    ]


async def _recorded(
    orchestrator: AsyncOperationOrchestrator,
    db: str,
    seen: list[OperationEvent],
    operations: list[dict[str, Any]],
    **options: Any,
) -> tuple[int, list[str]]:
    """Run the batch; the manager's stats count and event labels it added."""
    manager = orchestrator.databases[db]
    before = manager.get_stats()["count"]
    seen.clear()
    results = await execute_batch(orchestrator, operations, **options)
    assert all(r.success for r in results), [r.error for r in results]
    added = manager.get_stats()["count"] - before
    return added, [e.operation for e in seen if e.resource == db]


@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_a_grouped_insert_is_five_operations(
    orchestrator: AsyncOperationOrchestrator,
    table_name: str,
    seen: list[OperationEvent],
    db: str,
) -> None:
    operations = _inserts(db, table_name, 5)
    # The batch really is one SQL group (execute_many, or one transaction).
    (unit,) = plan_units(plan_batch(operations), orchestrator.databases)
    assert isinstance(unit, Group)

    added, labels = await _recorded(orchestrator, db, seen, operations)

    assert (added, len(labels)) == (5, 5), labels
    assert set(labels) == {"query"}


@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_an_atomic_batch_is_three_operations(
    orchestrator: AsyncOperationOrchestrator,
    table_name: str,
    seen: list[OperationEvent],
    db: str,
) -> None:
    added, labels = await _recorded(
        orchestrator, db, seen, _inserts(db, table_name, 3), atomic=True
    )

    assert (added, labels) == (3, ["query"] * 3)


@pytest.mark.parametrize("db", ["sqlite", "pg"])
async def test_a_transaction_operation_is_its_statements(
    orchestrator: AsyncOperationOrchestrator,
    table_name: str,
    seen: list[OperationEvent],
    db: str,
) -> None:
    query = INSERT[db].format(t=table_name)
    step = {
        "type": "transaction",
        "db_name": db,
        "queries": [{"query": query, "params": [x]} for x in range(3)],
    }

    added, labels = await _recorded(orchestrator, db, seen, [step])

    assert (added, labels) == (3, ["query"] * 3)


async def test_a_rolled_back_atomic_batch_says_so_in_its_results(
    orchestrator: AsyncOperationOrchestrator, table_name: str, seen: list[OperationEvent]
) -> None:
    operations = [
        *_inserts("sqlite", table_name, 2),
        {"type": "database", "db_name": "sqlite", "query": "INSERT INTO no_such_table VALUES (1)"},
    ]
    manager = orchestrator.databases["sqlite"]
    before = manager.get_stats()
    seen.clear()

    results = await execute_batch(orchestrator, operations, atomic=True)

    assert [r.error_type for r in results] == ["rolled_back", "rolled_back", "query_error"]
    after = manager.get_stats()
    # Three statements ran, one failed; no separate "transaction" record.
    assert after["count"] - before["count"] == 3
    assert after["errors"] - before["errors"] == 1
    assert [e.operation for e in seen if e.resource == "sqlite"] == ["query"] * 3
