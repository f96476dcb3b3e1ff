"""SQLite statements stop at their deadline, so the connection threads are free again.

A statement that never ends (a recursive CTE without a stop) used to be
abandoned at the deadline while it kept running in its reader thread: once
every reader held one, every read timed out until restart. Now SQLite's
progress handler interrupts it at the caller's deadline or at
``statement_timeout``, on the readers and on the writer alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iogate.backends.sqlite import AsyncSQLiteManager
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from tests.conftest import poll

ENDLESS = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
READERS = 3
SHORT = 0.3  # seconds: each endless statement's deadline
PROMPT = 1.0  # seconds: how soon a plain statement must answer afterwards


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[AsyncSQLiteManager]:
    manager = AsyncSQLiteManager(
        str(tmp_path / "deadline.db"),
        options=DatabaseOptions(max_connections=READERS + 1, statement_timeout=30),
    )
    await manager.initialize_pool()
    created = await manager.execute_query("CREATE TABLE t (n INTEGER)")
    assert created.success, created.error
    try:
        yield manager
    finally:
        await manager.close()


async def answers_promptly(
    manager: AsyncSQLiteManager,
    query: str,
    params: list[object] | None = None,
    guard: Access | None = None,
) -> Result:
    started = time.monotonic()
    result = await manager.execute_query(query, params, deadline=Deadline(PROMPT), guard=guard)
    assert result.success, result.error
    assert time.monotonic() - started < PROMPT
    return result


async def closes_promptly(manager: AsyncSQLiteManager) -> None:
    """close() waits for every thread to finish what it runs: none is stuck."""
    await asyncio.wait_for(manager.close(), PROMPT)


def assert_timed_out(results: list[Result]) -> None:
    for result in results:
        assert not result.success
        assert result.error_type == "timeout", result.error


async def test_endless_reads_beyond_the_readers_leave_reads_working(
    manager: AsyncSQLiteManager,
) -> None:
    started = time.monotonic()
    endless = await asyncio.gather(
        *(manager.execute_query(ENDLESS, deadline=Deadline(SHORT)) for _ in range(READERS + 2))
    )
    assert_timed_out(endless)
    assert time.monotonic() - started < SHORT + PROMPT
    one = await answers_promptly(manager, "SELECT 1 AS one")
    assert one.data == [{"one": 1}]
    # Every reader is free, not just one: as many concurrent reads as readers
    # and more, each within the prompt bound.
    many = await asyncio.gather(
        *(answers_promptly(manager, "SELECT ? AS n", [n]) for n in range(READERS * 3))
    )
    assert [result.data for result in many] == [[{"n": n}] for n in range(READERS * 3)]
    await closes_promptly(manager)


async def test_guarded_endless_reads_stop_too(manager: AsyncSQLiteManager) -> None:
    endless = await asyncio.gather(
        *(
            manager.execute_query(ENDLESS, deadline=Deadline(SHORT), guard=Access.READ)
            for _ in range(READERS + 2)
        )
    )
    assert_timed_out(endless)
    await answers_promptly(manager, "SELECT 1 AS one", guard=Access.READ)
    await closes_promptly(manager)


async def test_endless_writes_leave_the_writer_working(manager: AsyncSQLiteManager) -> None:
    """Interrupted writes share a group commit with innocent ones: those commit."""
    endless_write = f"INSERT INTO t {ENDLESS}"
    outcomes = await asyncio.gather(
        *(manager.execute_query(endless_write, deadline=Deadline(SHORT)) for _ in range(3)),
        manager.execute_query(endless_write, deadline=Deadline(SHORT), guard=Access.WRITE),
        manager.execute_query("INSERT INTO t VALUES (1)", deadline=Deadline(5)),
        manager.execute_query("INSERT INTO t VALUES (2)", deadline=Deadline(5), guard=Access.WRITE),
    )
    assert_timed_out(list(outcomes[:4]))
    assert all(result.success for result in outcomes[4:]), [r.error for r in outcomes[4:]]
    await answers_promptly(manager, "INSERT INTO t VALUES (3)")
    rows = await answers_promptly(manager, "SELECT n FROM t ORDER BY n")
    assert rows.data == [{"n": 1}, {"n": 2}, {"n": 3}]
    await closes_promptly(manager)


async def test_statement_timeout_applies_without_a_request_deadline(tmp_path: Path) -> None:
    manager = AsyncSQLiteManager(
        str(tmp_path / "timeout.db"),
        options=DatabaseOptions(max_connections=2, statement_timeout=SHORT),
    )
    async with manager:
        for query, guard in ((ENDLESS, None), (ENDLESS, Access.READ)):
            started = time.monotonic()
            result = await manager.execute_query(query, guard=guard)
            elapsed = time.monotonic() - started
            assert result.error_type == "timeout", result.error
            assert "statement_timeout" in (result.error or "")
            assert SHORT <= elapsed < SHORT + PROMPT
        written = await manager.execute_query(f"CREATE TABLE w AS {ENDLESS}")
        assert written.error_type == "timeout", written.error
        await answers_promptly(manager, "SELECT 1 AS one")
        created = await answers_promptly(manager, "CREATE TABLE w (n INTEGER)")
        assert created.success  # the interrupted CREATE TABLE AS left nothing behind


async def test_statement_timeout_in_a_transaction(tmp_path: Path) -> None:
    manager = AsyncSQLiteManager(
        str(tmp_path / "tx.db"),
        options=DatabaseOptions(max_connections=2, statement_timeout=SHORT),
    )
    async with manager:
        await manager.execute_query("CREATE TABLE t (n INTEGER)")
        async with manager.transaction() as tx:
            kept = await tx.execute_query("INSERT INTO t VALUES (1)")
            assert kept.success, kept.error
            stopped = await tx.execute_query(f"INSERT INTO t {ENDLESS}")
            assert stopped.error_type == "timeout", stopped.error
        assert tx.status == "rolled_back"
        rows = await answers_promptly(manager, "SELECT count(*) AS c FROM t")
        assert rows.data == [{"c": 0}]
        await answers_promptly(manager, "INSERT INTO t VALUES (2)")


async def test_a_cancelled_caller_stops_its_statement(manager: AsyncSQLiteManager) -> None:
    """No deadline at all: cancelling the caller is what frees the reader."""
    tasks = [asyncio.create_task(manager.execute_query(ENDLESS)) for _ in range(READERS + 2)]
    assert await poll(lambda: manager.pool_stats()["in_use"] >= 1, timeout=PROMPT)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await answers_promptly(manager, "SELECT 1 AS one")
    await closes_promptly(manager)
