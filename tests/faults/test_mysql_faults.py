"""MariaDB through the fault proxy: deadlines, mid-query loss, session state.

The same promises as tests/faults/test_postgres_faults.py. Deadlines: with
the server blackholed, every path ends within its deadline plus 0.5 s (the
caller's, or the configured timeouts: acquire + statement + margin for a
call, statement + margin per step of a ``transaction()`` block); a statement
is ``timeout``, a connection that cannot be made or checked in time is
``connection_error``, a COMMIT whose answer is lost is ``unknown_outcome``.
Mid-query loss is ``connection_error`` or ``unknown_outcome``, never
``query_error``. Session state reaches the next user unless
``reset_session=True`` (COM_RESET_CONNECTION).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from iogate import DatabaseOptions
from iogate.backends.mysql import AsyncMySQLManager
from iogate.backends.pooled import DEADLINE_MARGIN
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    DatabaseConnectionError,
    OperationTimeoutError,
    UnknownOutcomeError,
)
from tests.faults.proxy import FaultProxy

ACQUIRE = 1.0
STATEMENT = 1.0
DEADLINE = 1.0
SLACK = 0.5
CALL_BOUND = ACQUIRE + STATEMENT + DEADLINE_MARGIN
STEP_BOUND = STATEMENT + DEADLINE_MARGIN

pytestmark = pytest.mark.mysql


def options(**overrides: Any) -> DatabaseOptions:
    settings: dict[str, Any] = {
        "min_connections": 1,
        "max_connections": 2,
        "acquire_timeout": ACQUIRE,
        "statement_timeout": STATEMENT,
    }
    settings.update(overrides)
    return DatabaseOptions(**settings)


@pytest.fixture
async def through_proxy(
    mysql_fault: FaultProxy, mysql_url: str
) -> AsyncIterator[AsyncMySQLManager]:
    manager = AsyncMySQLManager(mysql_fault.url(mysql_url), options=options())
    await manager.initialize_pool()
    assert (await manager.execute_query("SELECT 1 AS one")).data == [{"one": 1}]
    try:
        yield manager
    finally:
        await mysql_fault.close()
        await manager.close()


@pytest.fixture
async def direct(mysql_url: str) -> AsyncIterator[AsyncMySQLManager]:
    """The same server without the proxy, to look at what happened."""
    manager = AsyncMySQLManager(mysql_url, options=options(min_connections=0))
    try:
        yield manager
    finally:
        await manager.close()


async def timed(work: Awaitable[Any]) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        outcome: Any = await asyncio.wait_for(work, 30)
    except Exception as exc:  # the outcome under test
        outcome = exc
    return time.monotonic() - started, outcome


def deadline_or_none(explicit: bool) -> Deadline | None:
    return Deadline(DEADLINE) if explicit else None


# -- deadlines ------------------------------------------------------------------


@pytest.mark.parametrize("explicit", [True, False], ids=["deadline", "no-deadline"])
@pytest.mark.parametrize("read_only", [False, True], ids=["statement", "read-only"])
async def test_statement_keeps_its_deadline(
    through_proxy: AsyncMySQLManager, mysql_fault: FaultProxy, explicit: bool, read_only: bool
) -> None:
    await mysql_fault.blackhole()
    took, result = await timed(
        through_proxy.execute_query(
            "SELECT 1", deadline=deadline_or_none(explicit), read_only=read_only
        )
    )
    bound = DEADLINE if explicit else CALL_BOUND
    assert result.error_type == "timeout", result
    assert bound - 0.1 <= took <= bound + SLACK, took


@pytest.mark.parametrize("explicit", [True, False], ids=["deadline", "no-deadline"])
@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
async def test_transaction_begin_keeps_its_deadline(
    through_proxy: AsyncMySQLManager, mysql_fault: FaultProxy, explicit: bool, read_only: bool
) -> None:
    await mysql_fault.blackhole()

    async def block() -> None:
        async with through_proxy.transaction(
            deadline=deadline_or_none(explicit), read_only=read_only
        ) as tx:
            await tx.execute_query("SELECT 1")

    took, raised = await timed(block())
    bound = DEADLINE if explicit else STEP_BOUND
    assert isinstance(raised, OperationTimeoutError), raised
    assert took <= bound + SLACK, took


@pytest.mark.parametrize("explicit", [True, False], ids=["deadline", "no-deadline"])
async def test_statement_in_transaction_keeps_its_deadline(
    through_proxy: AsyncMySQLManager, mysql_fault: FaultProxy, explicit: bool
) -> None:
    results = []

    async def block() -> str:
        async with through_proxy.transaction(deadline=deadline_or_none(explicit)) as tx:
            await mysql_fault.blackhole()
            results.append(await tx.execute_query("SELECT 1"))
        return tx.status

    took, status = await timed(block())
    assert results[0].error_type == "timeout", results
    assert status == "rolled_back"
    bound = DEADLINE if explicit else STEP_BOUND  # the interrupted connection is not reused
    assert took <= bound + SLACK, took


@pytest.mark.parametrize("explicit", [True, False], ids=["deadline", "no-deadline"])
async def test_commit_keeps_its_deadline(
    through_proxy: AsyncMySQLManager, mysql_fault: FaultProxy, explicit: bool
) -> None:
    async def block() -> None:
        async with through_proxy.transaction(deadline=deadline_or_none(explicit)) as tx:
            assert (await tx.execute_query("SELECT 1")).success
            await mysql_fault.blackhole()

    took, raised = await timed(block())
    bound = DEADLINE if explicit else STEP_BOUND
    assert isinstance(raised, UnknownOutcomeError), raised
    assert took <= bound + SLACK, took


async def test_new_connection_keeps_the_deadline(mysql_fault: FaultProxy, mysql_url: str) -> None:
    manager = AsyncMySQLManager(
        mysql_fault.url(mysql_url), options=options(min_connections=0, acquire_timeout=3)
    )
    await manager.initialize_pool()
    try:
        await mysql_fault.blackhole()
        took, result = await timed(manager.execute_query("SELECT 1", deadline=Deadline(DEADLINE)))
        assert result.error_type == "connection_error", result
        assert took <= DEADLINE + SLACK, took
    finally:
        await mysql_fault.close()
        await manager.close()


async def test_cold_pool_keeps_the_deadline(mysql_fault: FaultProxy, mysql_url: str) -> None:
    manager = AsyncMySQLManager(
        mysql_fault.url(mysql_url),
        options=options(min_connections=3, max_connections=3, acquire_timeout=3),
    )
    try:
        await mysql_fault.blackhole()
        first = asyncio.ensure_future(
            timed(manager.execute_query("SELECT 1", deadline=Deadline(DEADLINE)))
        )
        await mysql_fault.wait_accepted(mysql_fault.accepted + 1)  # the opening is under way
        took, result = await timed(manager.execute_query("SELECT 1", deadline=Deadline(DEADLINE)))
        assert result.error_type == "connection_error", result
        assert took <= DEADLINE + SLACK, took
        took, result = await first
        assert result.error_type == "connection_error", result
        assert took <= DEADLINE + SLACK, took
        took, result = await timed(manager.execute_query("SELECT 1"))
        assert result.error_type == "connection_error", result
        assert took <= 3 + SLACK, took
    finally:
        await mysql_fault.close()
        await manager.close()


async def test_initialize_pool_is_bounded_by_acquire_timeout(
    mysql_fault: FaultProxy, mysql_url: str
) -> None:
    manager = AsyncMySQLManager(
        mysql_fault.url(mysql_url), options=options(min_connections=4, max_connections=4)
    )
    try:
        await mysql_fault.blackhole()
        took, raised = await timed(manager.initialize_pool())
        assert isinstance(raised, DatabaseConnectionError), raised
        assert took <= ACQUIRE + SLACK, took
        await mysql_fault.restore()
        await manager.initialize_pool()
        assert manager.pool_stats()["idle"] == 4
    finally:
        await manager.close()


async def test_idle_check_keeps_the_deadline(mysql_fault: FaultProxy, mysql_url: str) -> None:
    manager = AsyncMySQLManager(
        mysql_fault.url(mysql_url), options=options(idle_check_interval=0.05)
    )
    await manager.initialize_pool()
    try:
        assert (await manager.execute_query("SELECT 1")).success
        await asyncio.sleep(0.1)  # idle past the interval: checked on next use
        await mysql_fault.blackhole()
        took, result = await timed(manager.execute_query("SELECT 1", deadline=Deadline(DEADLINE)))
        assert result.error_type == "connection_error", result
        assert took <= DEADLINE + SLACK, took
    finally:
        await mysql_fault.close()
        await manager.close()


# -- mid-query connection loss --------------------------------------------------


@pytest.fixture
async def table(direct: AsyncMySQLManager) -> AsyncIterator[str]:
    name = f"fault_{uuid.uuid4().hex[:10]}"
    assert (await direct.execute_query(f"CREATE TABLE {name} (marker TEXT) ENGINE=InnoDB")).success
    try:
        yield name
    finally:
        await direct.execute_query(f"DROP TABLE IF EXISTS {name}")


async def count(direct: AsyncMySQLManager, table: str) -> int:
    result = await direct.execute_query(f"SELECT COUNT(*) AS n FROM {table}")
    assert result.success, result
    return int(result.data[0]["n"])


BIG_READ = "SELECT REPEAT('x', 10000) AS v FROM seq_1_to_50"
SLOW_READ = "SELECT SLEEP(0.5) AS slept"


async def reset_soon(proxy: FaultProxy) -> None:
    await asyncio.sleep(0.2)
    await proxy.reset()


async def run_in(manager: AsyncMySQLManager, where: str, query: str) -> Any:
    if where == "plain":
        return await manager.execute_query(query)
    if where == "read-only":
        return await manager.execute_query(query, read_only=True)
    async with manager.transaction() as tx:
        result = await tx.execute_query(query)
    assert tx.status == "rolled_back"
    return result


@pytest.mark.parametrize("where", ["plain", "read-only", "transaction"])
@pytest.mark.parametrize("fault", ["close_after", "reset"])
async def test_read_loss_is_connection_error(
    through_proxy: AsyncMySQLManager, mysql_fault: FaultProxy, where: str, fault: str
) -> None:
    if fault == "close_after":
        await mysql_fault.close_after(100)
        result = await run_in(through_proxy, where, BIG_READ)
    else:
        result, _ = await asyncio.gather(
            run_in(through_proxy, where, SLOW_READ), reset_soon(mysql_fault)
        )
    assert result.error_type == "connection_error", result
    await mysql_fault.restore()
    assert (await through_proxy.execute_query("SELECT 1")).success


async def test_autocommit_write_loss_is_unknown_outcome(
    through_proxy: AsyncMySQLManager,
    mysql_fault: FaultProxy,
    direct: AsyncMySQLManager,
    table: str,
) -> None:
    """The reply is cut after the server committed: the write was applied."""
    await mysql_fault.close_after(0)
    result = await through_proxy.execute_query(f"INSERT INTO {table} VALUES ('cut')")
    assert result.error_type == "unknown_outcome", result
    assert await count(direct, table) == 1


async def test_autocommit_write_reset_is_unknown_outcome(
    through_proxy: AsyncMySQLManager, mysql_fault: FaultProxy, table: str
) -> None:
    result, _ = await asyncio.gather(
        through_proxy.execute_query(
            f"INSERT INTO {table} SELECT 'w' FROM (SELECT SLEEP(0.5)) AS s"
        ),
        reset_soon(mysql_fault),
    )
    assert result.error_type == "unknown_outcome", result


async def test_write_loss_inside_transaction_is_connection_error(
    through_proxy: AsyncMySQLManager,
    mysql_fault: FaultProxy,
    direct: AsyncMySQLManager,
    table: str,
) -> None:
    result, _ = await asyncio.gather(
        run_in(
            through_proxy,
            "transaction",
            f"INSERT INTO {table} SELECT 'w' FROM (SELECT SLEEP(0.5)) AS s",
        ),
        reset_soon(mysql_fault),
    )
    assert result.error_type == "connection_error", result
    await poll_async(lambda: count(direct, table), 0)  # rolled back with the connection


async def test_loss_during_commit_is_unknown_outcome(
    through_proxy: AsyncMySQLManager,
    mysql_fault: FaultProxy,
    direct: AsyncMySQLManager,
    table: str,
) -> None:
    with pytest.raises(UnknownOutcomeError):
        async with through_proxy.transaction() as tx:
            assert (await tx.execute_query(f"INSERT INTO {table} VALUES ('c')")).success
            await mysql_fault.close_after(0)  # COMMIT reaches the server, its answer does not
    # Neither committed nor rolled back, as far as iogate can know.
    assert tx.status == "unknown"
    assert await count(direct, table) == 1


async def test_loss_before_commit_is_connection_error(
    through_proxy: AsyncMySQLManager,
    mysql_fault: FaultProxy,
    direct: AsyncMySQLManager,
    table: str,
) -> None:
    with pytest.raises(DatabaseConnectionError) as raised:
        async with through_proxy.transaction() as tx:
            assert (await tx.execute_query(f"INSERT INTO {table} VALUES ('c')")).success
            await mysql_fault.reset()
            raw = tx.conn.raw  # type: ignore[attr-defined]
            await poll(lambda: bool(raw._stream_broken))
    assert not isinstance(raised.value, UnknownOutcomeError)
    await poll_async(lambda: count(direct, table), 0)


async def poll(condition: Callable[[], bool], within: float = 5.0) -> None:
    end = time.monotonic() + within
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def poll_async(value: Callable[[], Awaitable[Any]], wanted: Any, within: float = 5.0) -> None:
    end = time.monotonic() + within
    while (got := await value()) != wanted:
        assert time.monotonic() < end, f"still {got!r}, wanted {wanted!r}"
        await asyncio.sleep(0.05)


# -- session state --------------------------------------------------------------


@pytest.fixture
async def role(direct: AsyncMySQLManager) -> AsyncIterator[str]:
    name = f"iogate_fault_{uuid.uuid4().hex[:8]}"
    assert (await direct.execute_query(f"CREATE ROLE {name}")).success
    assert (await direct.execute_query(f"GRANT {name} TO CURRENT_USER")).success
    try:
        yield name
    finally:
        await direct.execute_query(f"DROP ROLE IF EXISTS {name}")


async def one_connection(mysql_url: str, *, reset: bool) -> AsyncMySQLManager:
    manager = AsyncMySQLManager(
        mysql_url, options=options(max_connections=1, statement_timeout=3, reset_session=reset)
    )
    await manager.initialize_pool()
    return manager


async def session(manager: AsyncMySQLManager) -> dict[str, Any]:
    result = await manager.execute_query(
        "SELECT @@max_statement_time AS statement_timeout, @@sql_mode AS sql_mode,"
        " @leftover AS user_variable, CURRENT_ROLE() AS role, @@autocommit AS autocommit,"
        " @@character_set_client AS charset, ? AS param",
        [7],
    )
    assert result.success, result
    row: dict[str, Any] = result.data[0]
    temp = await manager.execute_query("SELECT COUNT(*) AS n FROM leftover")
    row["temp"] = temp.success
    return row


async def leave_state(manager: AsyncMySQLManager, role: str) -> None:
    for statement in (
        "SET @leftover = 5",
        "SET SESSION max_statement_time = 1.234",
        "SET SESSION sql_mode = 'ANSI_QUOTES'",
        f"SET ROLE {role}",
        "CREATE TEMPORARY TABLE leftover (x INT)",
    ):
        result = await manager.execute_query(statement)
        assert result.success, result


async def test_session_state_reaches_the_next_user_by_default(mysql_url: str, role: str) -> None:
    manager = await one_connection(mysql_url, reset=False)
    try:
        await session(manager)
        await leave_state(manager, role)
        after = await session(manager)
        assert after["user_variable"] == 5
        assert after["statement_timeout"] == pytest.approx(1.234)
        assert after["sql_mode"] == "ANSI_QUOTES"
        assert after["role"] == role
        assert after["temp"] is True
    finally:
        await manager.close()


async def test_reset_session_gives_the_next_user_a_clean_session(mysql_url: str, role: str) -> None:
    manager = await one_connection(mysql_url, reset=True)
    try:
        before = await session(manager)  # also prepares the statement server-side
        assert before["statement_timeout"] == pytest.approx(3.0)
        await leave_state(manager, role)
        after = await session(manager)  # the statement is prepared again after the reset
        assert after == before
        async with manager.transaction() as tx:
            assert (await tx.execute_query("SET @leftover = 9")).success
            assert (await tx.execute_query(f"SET ROLE {role}")).success
        assert tx.status == "committed"
        assert await session(manager) == before
    finally:
        await manager.close()
