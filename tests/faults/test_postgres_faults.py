"""PostgreSQL through the fault proxy: deadlines, mid-query loss, session state.

Deadlines: with the server blackholed, every path ends within its deadline
plus 0.5 s: the caller's deadline, or without one the configured timeouts
(acquire + statement + margin for a call; statement + margin for each step
of a ``transaction()`` block). A statement that does not answer is
``timeout`` (a Result, or ``OperationTimeoutError`` where the path raises);
a connection that cannot be made or checked in time is ``connection_error``;
a COMMIT whose answer is lost is ``unknown_outcome``.

Mid-query loss: a reset or a reply cut short is ``connection_error`` for a
read and for anything inside a transaction that was not committed,
``unknown_outcome`` for an autocommit write or a COMMIT; never
``query_error``.

Session state: what trusted code sets on a pooled connection reaches the
next user unless ``reset_session=True``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from iogate import AsyncPostgreSQLManager, DatabaseOptions
from iogate.backends.pooled import DEADLINE_MARGIN
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    DatabaseConnectionError,
    OperationTimeoutError,
    UnknownOutcomeError,
)
from tests.conftest import port_open
from tests.faults.proxy import FaultProxy
from tests.faults.servers import ThrowawayPostgres

ACQUIRE = 1.0
STATEMENT = 1.0
DEADLINE = 1.0
SLACK = 0.5  # what the issue allows past a deadline
CALL_BOUND = ACQUIRE + STATEMENT + DEADLINE_MARGIN  # a call without a deadline
STEP_BOUND = STATEMENT + DEADLINE_MARGIN  # each step of a block without one

pytestmark = pytest.mark.postgres


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
    pg_fault: FaultProxy, postgres_url: str
) -> AsyncIterator[AsyncPostgreSQLManager]:
    """A warmed manager whose every connection goes through ``pg_fault``."""
    manager = AsyncPostgreSQLManager(pg_fault.url(postgres_url), options=options())
    await manager.initialize_pool()
    assert (await manager.execute_query("SELECT 1 AS one")).data == [{"one": 1}]
    try:
        yield manager
    finally:
        await pg_fault.close()  # reset what is blackholed so the teardown is quick
        await manager.close()


async def timed(work: Awaitable[Any]) -> tuple[float, Any]:
    """(seconds taken, the outcome or the exception raised)."""
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
    through_proxy: AsyncPostgreSQLManager, pg_fault: FaultProxy, explicit: bool, read_only: bool
) -> None:
    await pg_fault.blackhole()
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
    through_proxy: AsyncPostgreSQLManager, pg_fault: FaultProxy, explicit: bool, read_only: bool
) -> None:
    await pg_fault.blackhole()

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
    through_proxy: AsyncPostgreSQLManager, pg_fault: FaultProxy, explicit: bool
) -> None:
    """The statement is ``timeout``; the block then ends without raising (the
    ROLLBACK cannot be sent, and need not be: the connection is discarded)."""
    results = []

    async def block() -> str:
        async with through_proxy.transaction(deadline=deadline_or_none(explicit)) as tx:
            await pg_fault.blackhole()
            results.append(await tx.execute_query("SELECT 1"))
        return tx.status

    took, status = await timed(block())
    assert results[0].error_type == "timeout", results
    assert status == "rolled_back"
    # The statement, then (without a deadline) a ROLLBACK step of its own.
    bound = DEADLINE if explicit else 2 * STEP_BOUND
    assert took <= bound + SLACK, took


@pytest.mark.parametrize("explicit", [True, False], ids=["deadline", "no-deadline"])
async def test_commit_keeps_its_deadline(
    through_proxy: AsyncPostgreSQLManager, pg_fault: FaultProxy, explicit: bool
) -> None:
    async def block() -> None:
        async with through_proxy.transaction(deadline=deadline_or_none(explicit)) as tx:
            assert (await tx.execute_query("SELECT 1")).success
            await pg_fault.blackhole()

    took, raised = await timed(block())
    bound = DEADLINE if explicit else STEP_BOUND
    assert isinstance(raised, UnknownOutcomeError), raised
    assert took <= bound + SLACK, took


async def test_execute_many_without_deadline_is_bounded(
    through_proxy: AsyncPostgreSQLManager, pg_fault: FaultProxy
) -> None:
    await pg_fault.blackhole()
    took, raised = await timed(through_proxy.execute_many("SELECT $1::int", [[1], [2]]))
    assert isinstance(raised, OperationTimeoutError), raised
    assert took <= STEP_BOUND + SLACK, took


async def test_new_connection_keeps_the_deadline(pg_fault: FaultProxy, postgres_url: str) -> None:
    """Acquire needs a new connection and the server does not answer."""
    manager = AsyncPostgreSQLManager(
        pg_fault.url(postgres_url), options=options(min_connections=0, acquire_timeout=3)
    )
    await manager.initialize_pool()
    try:
        await pg_fault.blackhole()
        took, result = await timed(manager.execute_query("SELECT 1", deadline=Deadline(DEADLINE)))
        assert result.error_type == "connection_error", result
        assert took <= DEADLINE + SLACK, took
    finally:
        await pg_fault.close()
        await manager.close()


async def test_cold_pool_keeps_the_deadline(pg_fault: FaultProxy, postgres_url: str) -> None:
    """The first connection of a never-opened manager is still being made: the
    caller who started it and one who came later both keep their deadlines."""
    manager = AsyncPostgreSQLManager(
        pg_fault.url(postgres_url),
        options=options(min_connections=3, max_connections=3, acquire_timeout=3),
    )
    try:
        await pg_fault.blackhole()
        first = asyncio.ensure_future(
            timed(manager.execute_query("SELECT 1", deadline=Deadline(DEADLINE)))
        )
        await pg_fault.wait_accepted(pg_fault.accepted + 1)  # the opening is under way
        took, result = await timed(manager.execute_query("SELECT 1", deadline=Deadline(DEADLINE)))
        assert result.error_type == "connection_error", result
        assert took <= DEADLINE + SLACK, took
        took, result = await first
        assert result.error_type == "connection_error", result
        assert took <= DEADLINE + SLACK, took
        # Without a deadline: the acquire timeout bounds the opening.
        took, result = await timed(manager.execute_query("SELECT 1"))
        assert result.error_type == "connection_error", result
        assert took <= 3 + SLACK, took
    finally:
        await pg_fault.close()
        await manager.close()


async def test_initialize_pool_is_bounded_by_acquire_timeout(
    pg_fault: FaultProxy, postgres_url: str
) -> None:
    manager = AsyncPostgreSQLManager(
        pg_fault.url(postgres_url), options=options(min_connections=4, max_connections=4)
    )
    try:
        await pg_fault.blackhole()
        took, raised = await timed(manager.initialize_pool())
        assert isinstance(raised, DatabaseConnectionError), raised
        assert took <= ACQUIRE + SLACK, took  # four connects at once, not one after another
        await pg_fault.restore()
        await manager.initialize_pool()  # the database is back: it opens
        assert manager.pool_stats()["idle"] == 4
    finally:
        await manager.close()


async def test_idle_check_keeps_the_deadline(pg_fault: FaultProxy, postgres_url: str) -> None:
    manager = AsyncPostgreSQLManager(
        pg_fault.url(postgres_url), options=options(idle_check_interval=0.05)
    )
    await manager.initialize_pool()
    try:
        assert (await manager.execute_query("SELECT 1")).success
        await asyncio.sleep(0.1)  # idle past the interval: checked on next use
        await pg_fault.blackhole()
        took, result = await timed(manager.execute_query("SELECT 1", deadline=Deadline(DEADLINE)))
        assert result.error_type == "connection_error", result
        assert took <= DEADLINE + SLACK, took
    finally:
        await pg_fault.close()
        await manager.close()


# -- mid-query connection loss --------------------------------------------------


@pytest.fixture
async def table(pg_raw: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"fault_{uuid.uuid4().hex[:10]}"
    await pg_raw.execute(f"CREATE TABLE {name} (marker text)")
    try:
        yield name
    finally:
        await pg_raw.execute(f"DROP TABLE IF EXISTS {name}")


BIG_READ = "SELECT repeat('x', 10000) AS v FROM generate_series(1, 50)"
SLOW_READ = "SELECT pg_sleep(0.5) AS slept"


async def reset_soon(proxy: FaultProxy) -> None:
    await asyncio.sleep(0.2)  # the statement is running
    await proxy.reset()


async def run_in(manager: AsyncPostgreSQLManager, where: str, query: str) -> Any:
    """Run ``query`` plainly, read-only, or in a transaction block (its Result)."""
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
    through_proxy: AsyncPostgreSQLManager, pg_fault: FaultProxy, where: str, fault: str
) -> None:
    if fault == "close_after":
        await pg_fault.close_after(100)
        result = await run_in(through_proxy, where, BIG_READ)
    else:
        result, _ = await asyncio.gather(
            run_in(through_proxy, where, SLOW_READ), reset_soon(pg_fault)
        )
    assert result.error_type == "connection_error", result
    await pg_fault.restore()
    assert (await through_proxy.execute_query("SELECT 1")).success  # and it recovers


async def test_autocommit_write_loss_is_unknown_outcome(
    through_proxy: AsyncPostgreSQLManager,
    pg_fault: FaultProxy,
    pg_raw: asyncpg.Connection,
    table: str,
) -> None:
    """The reply is cut after the server committed: the write was applied."""
    insert = f"INSERT INTO {table} VALUES ('cut')"
    assert (await through_proxy.execute_query(insert)).success  # prepared: one round trip
    await pg_fault.close_after(0)
    result = await through_proxy.execute_query(insert)
    assert result.error_type == "unknown_outcome", result
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {table}") == 2


async def test_autocommit_write_reset_is_unknown_outcome(
    through_proxy: AsyncPostgreSQLManager, pg_fault: FaultProxy, table: str
) -> None:
    result, _ = await asyncio.gather(
        through_proxy.execute_query(f"INSERT INTO {table} SELECT 'w' FROM pg_sleep(0.5)"),
        reset_soon(pg_fault),
    )
    assert result.error_type == "unknown_outcome", result


async def test_write_loss_inside_transaction_is_connection_error(
    through_proxy: AsyncPostgreSQLManager,
    pg_fault: FaultProxy,
    pg_raw: asyncpg.Connection,
    table: str,
) -> None:
    """Nothing is committed before COMMIT: the loss is a plain connection error."""
    result, _ = await asyncio.gather(
        run_in(through_proxy, "transaction", f"INSERT INTO {table} SELECT 'w' FROM pg_sleep(0.5)"),
        reset_soon(pg_fault),
    )
    assert result.error_type == "connection_error", result
    # The server notices the reset and rolls back; the backend may linger a moment.
    gone = f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO {table}%'"
    for _ in range(250):  # at most 5 s
        if not await pg_raw.fetchval(gone):
            break
        await asyncio.sleep(0.02)
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {table}") == 0


async def test_loss_during_commit_is_unknown_outcome(
    through_proxy: AsyncPostgreSQLManager,
    pg_fault: FaultProxy,
    pg_raw: asyncpg.Connection,
    table: str,
) -> None:
    with pytest.raises(UnknownOutcomeError):
        async with through_proxy.transaction() as tx:
            assert (await tx.execute_query(f"INSERT INTO {table} VALUES ('c')")).success
            await pg_fault.close_after(0)  # COMMIT reaches the server, its answer does not
    # Neither committed nor rolled back, as far as iogate can know.
    assert tx.status == "unknown"
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {table}") == 1


async def test_loss_before_commit_is_connection_error(
    through_proxy: AsyncPostgreSQLManager,
    pg_fault: FaultProxy,
    pg_raw: asyncpg.Connection,
    table: str,
) -> None:
    """The connection is gone before COMMIT is sent: nothing was committed."""
    with pytest.raises(DatabaseConnectionError) as raised:
        async with through_proxy.transaction() as tx:
            assert (await tx.execute_query(f"INSERT INTO {table} VALUES ('c')")).success
            await pg_fault.reset()
            await poll(lambda: tx.conn.raw.is_closed())  # type: ignore[attr-defined]
    assert not isinstance(raised.value, UnknownOutcomeError)
    assert await pg_raw.fetchval(f"SELECT count(*) FROM {table}") == 0


async def poll(condition: Callable[[], bool], within: float = 5.0) -> None:
    end = time.monotonic() + within
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)


# -- session state --------------------------------------------------------------


@pytest.fixture
async def role(pg_raw: asyncpg.Connection) -> AsyncIterator[str]:
    name = f"iogate_fault_{uuid.uuid4().hex[:8]}"
    await pg_raw.execute(f"CREATE ROLE {name} NOLOGIN")
    try:
        yield name
    finally:
        await pg_raw.execute(f"DROP ROLE IF EXISTS {name}")


async def one_connection(postgres_url: str, *, reset: bool) -> AsyncPostgreSQLManager:
    manager = AsyncPostgreSQLManager(
        postgres_url,
        options=options(max_connections=1, statement_timeout=3, reset_session=reset),
    )
    await manager.initialize_pool()
    return manager


async def session(manager: AsyncPostgreSQLManager) -> dict[str, Any]:
    result = await manager.execute_query(
        "SELECT current_setting('search_path') AS search_path,"
        " current_setting('statement_timeout') AS statement_timeout,"
        " current_user::text AS who, to_regclass('pg_temp.leftover')::text AS temp,"
        " $1::int AS param",
        [7],
    )
    assert result.success, result
    row: dict[str, Any] = result.data[0]
    return row


async def leave_state(manager: AsyncPostgreSQLManager, role: str) -> None:
    for statement in (
        "SET search_path TO pg_catalog",
        "SET statement_timeout = '1234ms'",
        f"SET ROLE {role}",
        "CREATE TEMP TABLE leftover (x int)",
    ):
        result = await manager.execute_query(statement)
        assert result.success, result


async def test_session_state_reaches_the_next_user_by_default(postgres_url: str, role: str) -> None:
    """The documented contract without ``reset_session``."""
    manager = await one_connection(postgres_url, reset=False)
    try:
        await session(manager)
        await leave_state(manager, role)
        after = await session(manager)
        assert after["search_path"] == "pg_catalog"
        assert after["statement_timeout"] == "1234ms"
        assert after["who"] == role
        assert after["temp"] is not None
    finally:
        await manager.close()


async def test_reset_session_gives_the_next_user_a_clean_session(
    postgres_url: str, role: str
) -> None:
    manager = await one_connection(postgres_url, reset=True)
    try:
        before = await session(manager)  # also prepares the statement
        assert before["statement_timeout"] == "3s"
        await leave_state(manager, role)
        after = await session(manager)  # the cached prepared statement still works
        assert after == before
        # The same through a transaction block (SET, not SET LOCAL, outlives it).
        async with manager.transaction() as tx:
            assert (await tx.execute_query("SET search_path TO pg_catalog")).success
            assert (await tx.execute_query(f"SET ROLE {role}")).success
        assert tx.status == "committed"
        assert await session(manager) == before
    finally:
        await manager.close()


# -- server restart -------------------------------------------------------------


async def test_fast_shutdown_under_load_never_escapes_as_an_exception(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    """A fast shutdown ends every session with a FATAL message; one that
    arrives while a connection sits idle left asyncpg unable to start the next
    operation (``InternalClientError``), which escaped ``execute_query`` (a 500
    in the gateway). Every call must give a Result: served, or
    ``connection_error`` while the server is away."""
    manager = AsyncPostgreSQLManager(
        throwaway_postgres.url, options=options(max_connections=4, acquire_timeout=2)
    )
    await manager.initialize_pool()
    kinds: dict[str | None, int] = {}
    stop = asyncio.Event()

    async def worker(number: int) -> None:
        while not stop.is_set():
            result = await manager.execute_query(
                "SELECT $1::int AS n", [number], deadline=Deadline(3)
            )
            kinds[result.error_type] = kinds.get(result.error_type, 0) + 1
            await asyncio.sleep(0.005)

    try:
        for _ in range(2):
            workers = [asyncio.create_task(worker(n)) for n in range(4)]
            await asyncio.sleep(0.3)
            await asyncio.to_thread(throwaway_postgres.stop, "fast")
            await asyncio.sleep(0.3)
            await asyncio.to_thread(throwaway_postgres.start)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*workers)  # an escaped exception fails here
            stop.clear()
    finally:
        await manager.close()
        if not port_open(throwaway_postgres.url, throwaway_postgres.port):
            throwaway_postgres.start()
    assert set(kinds) <= {None, "connection_error"}, kinds
    assert kinds.get(None, 0) > 0, kinds
    assert kinds.get("connection_error", 0) > 0, kinds  # the restarts were seen
