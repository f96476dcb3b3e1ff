"""The PostgreSQL manager: pooled asyncpg connections answering ``Result``.

How a call runs (the package's docstring says why): trusted SQL in
autocommit on a prepared statement (:mod:`.statements`); read-only and
guarded SQL in a transaction opened and ended here; transaction blocks
through :class:`iogate.backends.base.SQLTransaction`, whose begin, end and
statement steps are this manager's ``_begin``, ``_end`` and ``_statement``.
Every asyncpg call is wrapped in :class:`.errors.PostgresErrors`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg

from iogate.backends.base import SQLTransaction
from iogate.backends.meter import NO_BYTE_CAP
from iogate.backends.pool import PooledConnection
from iogate.backends.pooled import Checkout, PooledDatabaseManager
from iogate.backends.postgres.connection import close_connection, connect_postgres
from iogate.backends.postgres.errors import PostgresErrors, map_error
from iogate.backends.postgres.guard import classify_postgres
from iogate.backends.postgres.results import to_result
from iogate.backends.postgres.statements import fetch, is_single_row_insert, may_write
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
    QueryError,
    ResultTooLargeError,
    UnknownOutcomeError,
)
from iogate.core.params import Params, check_count, normalize_params
from iogate.core.redact import redact_url
from iogate.core.resource import Resource
from iogate.core.result import Result
from iogate.core.sqlguard import Access, require

__all__ = ["AsyncPostgreSQLManager"]

logger = logging.getLogger("iogate.postgres")

perf_counter = time.perf_counter
_RESET_TIMEOUT = 5.0
_BEGIN = {True: "BEGIN READ ONLY", False: "BEGIN"}


class AsyncPostgreSQLManager(PooledDatabaseManager[asyncpg.Connection]):
    """Pooled PostgreSQL access returning ``Result`` (seed 000).

    ``AsyncPostgreSQLManager(dsn, max_connections=20)`` as in the seed; every
    other setting comes through ``options`` (:class:`DatabaseOptions`).
    ``connect`` replaces how a raw connection is made (a test seam).
    """

    backend = "postgresql"
    bounds_result_bytes = True

    def __init__(
        self,
        dsn: str,
        max_connections: int | None = None,
        *,
        name: str | None = None,
        options: DatabaseOptions | None = None,
        connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
    ) -> None:
        self._dsn = dsn
        super().__init__(
            name=name,
            options=(options or DatabaseOptions()).with_max_connections(max_connections),
            connect=connect,
            close=close_connection,
        )

    def __repr__(self) -> str:
        return f"<AsyncPostgreSQLManager {self.name!r} {redact_url(self._dsn)} {self._pool!r}>"

    @property
    def dsn(self) -> str:
        """The DSN with its password masked."""
        return redact_url(self._dsn)

    @property
    def target(self) -> str:
        """The DSN with its password masked."""
        return redact_url(self._dsn)

    def _target(self) -> str:
        return redact_url(self._dsn)

    async def _default_connect(self) -> asyncpg.Connection:
        return await connect_postgres(
            self._dsn,
            timeout=self.options.acquire_timeout,
            statement_timeout=self.options.statement_timeout,
        )

    # -- connections ----------------------------------------------------------

    async def _check_connection(self, raw: asyncpg.Connection) -> bool:
        if raw.is_closed():  # asyncpg already read the server's goodbye
            return False
        try:
            await raw.execute("SELECT 1")
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ):
            return False
        return True

    def _leaves_clean(self, exc: BaseException) -> bool:
        # The server refused the statement (it has a SQLSTATE): the session is
        # intact. A client-side failure (parameter encoding) can leave the
        # protocol mid-request holding locks: reset or discard.
        return isinstance(exc, QueryError) and exc.sqlstate is not None

    def release(self, conn: PooledConnection[Any], *, clean: bool = True) -> None:
        """Return a connection; ``clean=False`` resets (or discards) it first.

        The reset runs in its own task, so a caller being cancelled cannot
        interrupt it: the connection always comes back or is closed.
        """
        raw: asyncpg.Connection = conn.raw
        if clean and not conn.needs_reset and not raw.is_in_transaction():
            self._pool.release(conn)
            return
        if raw.is_closed():
            self._pool.release(conn, discard=True)
            return
        self._spawn(self._reset_and_release(conn))

    async def _reset_and_release(self, conn: PooledConnection[Any]) -> None:
        raw: asyncpg.Connection = conn.raw
        try:
            async with asyncio.timeout(_RESET_TIMEOUT):
                # Each waits for asyncpg's cancel request of an interrupted
                # statement first. iogate's own BEGIN is not asyncpg's
                # transaction: rolled back here, reset() would log an error.
                if raw.is_in_transaction():
                    await raw.execute("ROLLBACK")
                await raw.reset()
        except BaseException:
            logger.debug("discarding a connection whose reset failed", exc_info=True)
            raw.terminate()
            self._pool.release(conn, discard=True)
            return
        conn.needs_reset = False
        self._pool.release(conn)

    # -- operations -------------------------------------------------------------

    async def _execute(
        self,
        query: str,
        params: Params,
        *,
        deadline: Deadline,
        read_only: bool,
        max_rows: int | None,
        guard: Access | None = None,
        max_result_bytes: int | None = None,
    ) -> Result:
        args = normalize_params(params)
        check_count(query, args, "dollar")
        if guard is not None:
            require(classify_postgres(query), guard)
        read = read_only or guard is Access.READ or self.options.read_only
        max_rows = max_rows or self.options.max_rows
        caps = (
            max_rows + 1 if max_rows else 0,
            max_result_bytes or self.options.max_result_bytes or NO_BYTE_CAP,
        )
        # Checkout itself, positionally: acquire()'s call, and a keyword
        # argument's slower one, saved on every query.
        async with Checkout(self, deadline, guard is not None) as conn:
            if read or guard is not None:
                rows, status = await self._in_transaction(conn, query, args, deadline, read, caps)
            else:
                try:
                    rows, status = await self._run(conn, query, args, deadline, caps, script=True)
                except (DatabaseConnectionError, ResultTooLargeError) as exc:
                    # Autocommit: a write may have committed before its
                    # answer (or the rest of its RETURNING rows) was lost.
                    if may_write(query):
                        raise UnknownOutcomeError(
                            f"{exc}; the statement may have been applied"
                        ) from exc
                    raise
        return to_result(rows, status, max_rows)

    async def _in_transaction(
        self,
        conn: PooledConnection[Any],
        query: str,
        args: tuple[Any, ...],
        deadline: Deadline,
        read: bool,
        caps: tuple[int, int],
    ) -> tuple[list[Any], str]:
        """One statement in a transaction opened and ended here.

        Read: ``BEGIN READ ONLY`` ... ``ROLLBACK``. Write: ``BEGIN`` ...
        ``COMMIT``; a connection lost once COMMIT was sent is
        ``unknown_outcome``. A statement the server refused is rolled back
        here, so the connection goes back to the pool as it came; one whose
        result was too large lost its connection, and with it the transaction.
        """
        raw: asyncpg.Connection = conn.raw
        await self._begin_on(raw, read, deadline)
        try:
            outcome = await self._run(conn, query, args, deadline, caps)
        except QueryError:
            # Refused by the server, or a parameter asyncpg could not encode
            # (nothing was sent): end the transaction here either way.
            await self._rollback(raw, deadline)
            raise
        if read:
            await self._rollback(raw, deadline)
        else:
            await self._commit(raw, deadline)
        return outcome

    async def _run(
        self,
        conn: PooledConnection[Any],
        query: str,
        args: tuple[Any, ...],
        deadline: Deadline,
        caps: tuple[int, int],
        *,
        script: bool = False,
    ) -> tuple[list[Any], str]:
        """Run one statement (:func:`.statements.fetch`), errors mapped."""
        # _step_deadline inlined, and map_error called from an except clause
        # (not `with PostgresErrors`): three calls fewer per statement.
        timeout = deadline.or_within(self._step_budget).remaining()
        try:
            return await fetch(conn, query, args, timeout, script, caps)
        except Exception as exc:
            error = map_error(exc, timeout)
            if error is None:
                raise
            raise error from exc

    def _caps(self) -> tuple[int, int]:
        """The options' caps, for statements run without per-call ones."""
        max_rows = self.options.max_rows
        return (max_rows + 1 if max_rows else 0, self.options.max_result_bytes or NO_BYTE_CAP)

    async def execute_many(
        self,
        query: str,
        params_list: Sequence[Params],
        *,
        deadline: Deadline | None = None,
        guard: Access | None = None,
    ) -> list[Result] | None:
        """One statement per parameter set, in one transaction: all or nothing.

        Returns a Result per parameter set, or None when a statement was
        refused and the transaction rolled back (nothing was written; run them
        one by one to find which). A plain single-row ``INSERT ... VALUES``
        goes through asyncpg's pipelined ``executemany``: one round trip for
        the lot, each Result reporting one row. Anything else runs statement
        by statement on one connection so each Result keeps its own
        ``rows_affected``. A statement ``guard`` refuses fails every Result
        without touching the database. Lost connections and deadlines raise.
        Each statement of a returned list is recorded as one of the
        manager's operations (stats and events), with its share of the time.
        """
        started = perf_counter()
        await self._ensure_open()
        if guard is not None:
            try:
                require(classify_postgres(query), guard)
            except IogateError as exc:
                refused = [Result.from_exception(exc, operation="query") for _ in params_list]
                return self._finish_each(refused, started)
        # Without a deadline each step is bounded (see _step_deadline).
        deadline = deadline or Deadline.never()
        args_list = [normalize_params(params) for params in params_list]
        for args in args_list:
            check_count(query, args, "dollar")
        read = guard is Access.READ or self.options.read_only
        try:
            async with self.acquire(deadline, stateless=guard is not None) as conn:
                await self._begin_on(conn.raw, read, deadline)
                try:
                    results = await self._many(conn, query, args_list, deadline)
                except QueryError as exc:
                    if exc.sqlstate is None:
                        raise
                    await self._rollback(conn.raw, deadline)
                    return None
                try:
                    await self._commit(conn.raw, deadline)
                except QueryError:  # raised by COMMIT itself (deferred checks)
                    return None
        except QueryError:
            return None
        except ResultTooLargeError:
            # The connection was aborted, so the transaction is rolled back:
            # run one by one, where only that statement fails.
            return None
        return self._finish_each(results, started)

    async def _many(
        self,
        conn: PooledConnection[Any],
        query: str,
        args_list: list[tuple[Any, ...]],
        deadline: Deadline,
    ) -> list[Result]:
        if is_single_row_insert(query):
            timeout = self._step_deadline(deadline).remaining()
            with PostgresErrors(timeout):
                await conn.raw.executemany(query, args_list, timeout=timeout)
            return [Result.ok([], operation="query", rows_affected=1) for _ in args_list]
        results = []
        caps = self._caps()
        for args in args_list:
            rows, status = await self._run(conn, query, args, deadline, caps)
            results.append(to_result(rows, status, self.options.max_rows))
        return results

    # -- transactions -----------------------------------------------------------

    async def _begin_on(self, raw: asyncpg.Connection, read: bool, deadline: Deadline) -> None:
        timeout = self._step_deadline(deadline).remaining()
        with PostgresErrors(timeout):
            await raw.execute(_BEGIN[read], timeout=timeout)

    async def _rollback(self, raw: asyncpg.Connection, deadline: Deadline) -> None:
        timeout = self._step_deadline(deadline).remaining()
        with PostgresErrors(timeout):
            await raw.execute("ROLLBACK", timeout=timeout)

    async def _commit(self, raw: asyncpg.Connection, deadline: Deadline) -> None:
        """COMMIT; once it is sent, a lost answer is ``unknown_outcome``.

        A connection already lost before COMMIT could be sent took its
        transaction with it: that is a plain ``connection_error``.
        """
        if raw.is_closed():
            raise DatabaseConnectionError(
                "connection lost before COMMIT: the server rolled the transaction back"
            )
        timeout = self._step_deadline(deadline).remaining()
        try:
            with PostgresErrors(timeout):
                await raw.execute("COMMIT", timeout=timeout)
        except (DatabaseConnectionError, OperationTimeoutError) as exc:
            raise UnknownOutcomeError(
                f"{exc} while committing: the transaction may have been applied"
            ) from exc

    # The steps of SQLTransaction (iogate.backends.base.TransactionDriver).

    async def _begin(self, tx: SQLTransaction) -> None:
        await self._begin_on(tx.conn.raw, tx.read_only, tx.deadline)

    async def _end(self, tx: SQLTransaction, *, commit: bool) -> None:
        conn: PooledConnection[Any] = tx.conn
        if commit and not tx.read_only:
            await self._commit(conn.raw, tx.deadline)
            return
        # A read-only transaction has nothing to commit. A ROLLBACK that
        # cannot be sent needs no retry: the server rolls back the
        # transaction of a connection that is gone (and release() resets or
        # discards this one).
        try:
            await self._rollback(conn.raw, tx.deadline)
        except (DatabaseConnectionError, OperationTimeoutError):
            logger.debug("ROLLBACK at the end of a transaction failed", exc_info=True)
            conn.needs_reset = True

    async def _statement(self, tx: SQLTransaction, query: str, params: Params) -> Result:
        args = normalize_params(params)
        check_count(query, args, "dollar")
        if tx.guard is not None:
            require(classify_postgres(query), tx.guard)
        rows, status = await self._run(tx.conn, query, args, tx.deadline, self._caps())
        return to_result(rows, status, self.options.max_rows)

    async def _ping(self) -> None:
        async with self.acquire(stateless=True) as conn:
            with PostgresErrors():
                await conn.raw.fetchval("SELECT 1")


if TYPE_CHECKING:  # mypy proves the manager is a Resource
    _resource: Resource = AsyncPostgreSQLManager("postgresql://")
