"""The SQL spine's pure pieces: the acquire context, SQLTransaction's block,
the driver-error maps, rows_result and deadline_error (issue 15)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from asyncmy.errors import OperationalError, ProgrammingError

from iogate.backends.base import SQLTransaction
from iogate.backends.mysql.errors import MySQLErrors
from iogate.backends.pool import PooledConnection
from iogate.backends.pooled import PooledDatabaseManager
from iogate.backends.postgres.errors import PostgresErrors
from iogate.backends.rows import rows_result
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline, deadline_error
from iogate.core.errors import (
    DatabaseConnectionError,
    OperationTimeoutError,
    QueryError,
    ReadOnlyError,
    UnknownOutcomeError,
)
from iogate.core.params import Params
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from tests.fakes import ConnectionFactory

# -- the acquire context ---------------------------------------------------------


class FakeSQLManager(PooledDatabaseManager[int]):
    """Connections are numbers; ``release`` records how each came back."""

    backend = "fake"

    def __init__(self, **options: Any) -> None:
        self.factory = ConnectionFactory()
        self.released: list[tuple[int, bool]] = []
        super().__init__(
            name="fake",
            options=DatabaseOptions(min_connections=0, **options),
            connect=self.factory.connect,
            close=self.factory.close,
        )

    async def _default_connect(self) -> int:
        raise AssertionError("connect is given")

    def _target(self) -> str:
        return "fake"

    async def _check_connection(self, raw: int) -> bool:
        return True

    def _leaves_clean(self, exc: BaseException) -> bool:
        return isinstance(exc, QueryError)

    def release(self, conn: PooledConnection[Any], *, clean: bool = True) -> None:
        self.released.append((conn.raw, clean))
        self._pool.release(conn)

    async def _execute(
        self,
        query: str,
        params: Params,
        *,
        deadline: Deadline,
        read_only: bool,
        max_rows: int | None,
        guard: Access | None = None,
    ) -> Result:
        raise AssertionError("not used")

    async def _begin(self, tx: SQLTransaction) -> None:
        raise AssertionError("not used")

    async def _end(self, tx: SQLTransaction, *, commit: bool) -> None:
        raise AssertionError("not used")

    async def _statement(self, tx: SQLTransaction, query: str, params: Params) -> Result:
        raise AssertionError("not used")

    async def _ping(self) -> None:
        return None


async def test_acquire_releases_clean_after_a_normal_block() -> None:
    manager = FakeSQLManager()
    async with manager.acquire() as conn:
        assert conn.raw == 1
        assert manager.pool_stats()["in_use"] == 1
    assert manager.released == [(1, True)]
    assert manager.pool_stats()["in_use"] == 0
    await manager.close()


@pytest.mark.parametrize(
    ("error", "clean"),
    [(QueryError("refused", sqlstate="23505"), True), (DatabaseConnectionError("lost"), False)],
    ids=["left-clean", "dirty"],
)
async def test_acquire_asks_the_backend_whether_an_error_left_it_clean(
    error: Exception, clean: bool
) -> None:
    manager = FakeSQLManager()
    with pytest.raises(type(error)):
        async with manager.acquire():
            raise error
    assert manager.released == [(1, clean)]
    await manager.close()


async def test_acquire_resets_a_connection_marked_needs_reset() -> None:
    manager = FakeSQLManager()
    async with manager.acquire() as conn:
        conn.needs_reset = True
    assert manager.released == [(1, False)]
    await manager.close()


@pytest.mark.parametrize(("stateless", "clean"), [(False, False), (True, True)])
async def test_reset_session_resets_trusted_work_only(stateless: bool, clean: bool) -> None:
    manager = FakeSQLManager(reset_session=True)
    async with manager.acquire(stateless=stateless):
        pass
    assert manager.released == [(1, clean)]
    await manager.close()


async def test_a_cancelled_block_still_releases_its_connection() -> None:
    manager = FakeSQLManager()
    entered = asyncio.Event()

    async def hold() -> None:
        async with manager.acquire():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert manager.released == [(1, False)]
    assert manager.pool_stats()["in_use"] == 0
    await manager.close()


async def test_awaiting_acquire_checks_out_without_releasing() -> None:
    manager = FakeSQLManager()
    conn = await manager.acquire()
    assert manager.pool_stats()["in_use"] == 1
    manager.release(conn)
    assert manager.pool_stats()["in_use"] == 0
    await manager.close()


# -- SQLTransaction ---------------------------------------------------------------


class FakeDriver:
    """Records the steps; ``commit_error`` is what COMMIT raises."""

    def __init__(self, commit_error: BaseException | None = None) -> None:
        self.steps: list[str] = []
        self.commit_error = commit_error

    async def _begin(self, tx: SQLTransaction) -> None:
        self.steps.append("begin")

    async def _end(self, tx: SQLTransaction, *, commit: bool) -> None:
        self.steps.append("commit" if commit else "rollback")
        if commit and self.commit_error is not None:
            raise self.commit_error

    async def _statement(self, tx: SQLTransaction, query: str, params: Params) -> Result:
        if query == "bad":
            raise QueryError("refused", sqlstate="42601")
        return Result.ok([], operation="query")


def make_tx(driver: FakeDriver) -> SQLTransaction:
    return SQLTransaction(driver, None, Deadline.never(), read_only=False, guard=None)


@asynccontextmanager
async def block(tx: SQLTransaction) -> AsyncIterator[SQLTransaction]:
    async with tx.block() as inner:
        yield inner


async def test_a_block_without_failures_commits() -> None:
    driver = FakeDriver()
    tx = make_tx(driver)
    async with block(tx):
        assert (await tx.execute_query("ok")).success
    assert (driver.steps, tx.status) == (["begin", "commit"], "committed")


async def test_a_failed_statement_rolls_the_block_back() -> None:
    driver = FakeDriver()
    tx = make_tx(driver)
    async with block(tx):
        result = await tx.execute_query("bad")
    assert result.error_type == "query_error"
    assert (driver.steps, tx.status) == (["begin", "rollback"], "rolled_back")


async def test_a_block_that_raised_is_rolled_back_and_the_error_propagates() -> None:
    driver = FakeDriver()
    tx = make_tx(driver)
    with pytest.raises(LookupError):
        async with block(tx):
            raise LookupError("the caller's")
    assert (driver.steps, tx.status) == (["begin", "rollback"], "rolled_back")


async def test_a_lost_commit_leaves_the_status_unknown() -> None:
    driver = FakeDriver(commit_error=UnknownOutcomeError("COMMIT answer lost"))
    tx = make_tx(driver)
    with pytest.raises(UnknownOutcomeError):
        async with block(tx):
            pass
    assert tx.status == "unknown"


async def test_a_commit_refused_is_rolled_back() -> None:
    driver = FakeDriver(commit_error=QueryError("deferred check", sqlstate="23503"))
    tx = make_tx(driver)
    with pytest.raises(QueryError):
        async with block(tx):
            pass
    assert tx.status == "rolled_back"


# -- the driver-error maps --------------------------------------------------------


def mapped(errors: PostgresErrors | MySQLErrors, exc: BaseException) -> BaseException:
    with pytest.raises(Exception) as raised, errors:
        raise exc
    return raised.value


@pytest.mark.parametrize(
    ("driver_error", "expected", "error_type"),
    [
        (asyncpg.UniqueViolationError("duplicate key"), QueryError, "query_error"),
        (asyncpg.ReadOnlySQLTransactionError("read-only"), ReadOnlyError, "read_only"),
        (asyncpg.QueryCanceledError("canceling statement"), OperationTimeoutError, "timeout"),
        (asyncpg.AdminShutdownError("terminating"), DatabaseConnectionError, "connection_error"),
        (ConnectionResetError("reset by peer"), DatabaseConnectionError, "connection_error"),
        (TimeoutError(), OperationTimeoutError, "timeout"),
        (TypeError("an int is required"), QueryError, "query_error"),
    ],
)
def test_postgres_errors_most_specific_first(
    driver_error: BaseException, expected: type[Exception], error_type: str
) -> None:
    error = mapped(PostgresErrors(1.5), driver_error)
    assert type(error) is expected
    assert error.error_type == error_type  # type: ignore[attr-defined]
    assert error.__cause__ is driver_error


def test_postgres_errors_use_the_one_deadline_message() -> None:
    error = mapped(PostgresErrors(1.5), TimeoutError())
    assert str(error) == str(deadline_error("the query", budget=1.5))


def test_postgres_errors_leave_iogate_errors_and_others_alone() -> None:
    own = QueryError("already mapped")
    assert mapped(PostgresErrors(), own) is own
    other = LookupError("not a driver's")
    assert mapped(PostgresErrors(), other) is other


def test_postgres_connect_errors_name_the_target_without_its_password() -> None:
    dsn = "postgresql://app:s3cret@db.example:5432/app"
    error = mapped(PostgresErrors.connecting(dsn, 2.0), OSError("s3cret refused"))
    assert isinstance(error, DatabaseConnectionError)
    assert str(error).startswith("cannot connect to postgresql://app:***@db.example")
    assert "s3cret" not in str(error)
    timeout = mapped(PostgresErrors.connecting(dsn, 2.0), TimeoutError())
    assert "no answer within 2s" in str(timeout)


@pytest.mark.parametrize(
    ("driver_error", "expected"),
    [
        (ProgrammingError(1064, "syntax error"), QueryError),
        (OperationalError(1969, "max_statement_time exceeded"), OperationTimeoutError),
        (OperationalError(1792, "read only transaction"), ReadOnlyError),
        (OperationalError(2013, "Lost connection"), DatabaseConnectionError),
        (OperationalError(1927, "Connection was killed"), DatabaseConnectionError),
    ],
)
def test_mysql_errors_by_code(driver_error: BaseException, expected: type[Exception]) -> None:
    error = mapped(MySQLErrors(1.0, "pw"), driver_error)
    assert type(error) is expected
    assert error.__cause__ is driver_error


def test_mysql_errors_redact_the_password() -> None:
    error = mapped(MySQLErrors(password="hunter2"), ProgrammingError(1045, "bad hunter2"))
    assert "hunter2" not in str(error)


# -- rows_result and deadline_error -----------------------------------------------


def test_rows_result_truncates_past_max_rows() -> None:
    rows = [(1, "a"), (2, "b"), (3, "c")]
    result = rows_result(("id", "name"), rows, 2, None)
    assert result.data == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert result.truncated
    whole = rows_result(("id", "name"), rows, None, 3)
    assert (len(whole.data), whole.truncated, whole.rows_affected) == (3, False, 3)


def test_deadline_error_messages() -> None:
    assert str(deadline_error("the query", started=False)) == (
        "deadline passed before the query started"
    )
    assert str(deadline_error("COMMIT", budget=0.25)) == (
        "COMMIT did not finish within the deadline (0.25s)"
    )
    assert isinstance(deadline_error("x"), TimeoutError)
