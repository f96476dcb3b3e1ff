"""The MySQL/MariaDB manager: pooled asyncmy connections answering ``Result``.

How a call runs (the package's docstring says why): trusted SQL in
autocommit; read-only work in a read-only session; guarded SQL in a
transaction opened and ended here; transaction blocks through
:class:`iogate.backends.base.SQLTransaction`, whose steps are this
manager's ``_begin``, ``_end`` and ``_statement``. asyncmy's errors are
mapped by :class:`.errors.MySQLErrors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asyncmy.constants import SERVER_STATUS
from asyncmy.errors import MySQLError

from iogate.backends.base import SQLTransaction
from iogate.backends.meter import NO_BYTE_CAP
from iogate.backends.mysql.connection import (
    MySQLConnection,
    close_connection,
    connect_mysql,
    execute_sql,
    kill_thread,
    parse_mysql_url,
    reset_connection,
)
from iogate.backends.mysql.errors import MySQLErrors, map_error
from iogate.backends.mysql.meter import ResultMeter
from iogate.backends.mysql.placeholders import bind_parameters, classify_guarded
from iogate.backends.mysql.results import (
    Outcome,
    count,
    may_write,
    note_session_change,
    to_result,
)
from iogate.backends.pool import PooledConnection
from iogate.backends.pooled import Checkout, PooledDatabaseManager
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline, deadline_error
from iogate.core.errors import (
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
    QueryError,
    ResultTooLargeError,
    UnknownOutcomeError,
)
from iogate.core.params import Params, normalize_params
from iogate.core.redact import redact_url
from iogate.core.resource import Resource
from iogate.core.result import Result
from iogate.core.sqlguard import Access, require

__all__ = ["AsyncMySQLManager"]

logger = logging.getLogger("iogate.mysql")

_RESET_TIMEOUT = 5.0
_RESET_STATEMENTS = ("ROLLBACK", "SET autocommit = 1", "UNLOCK TABLES")
# What a guarded statement must leave as it found: still inside iogate's
# transaction, autocommit still on (it comes back when the transaction ends).
_GUARDED_STATUS = SERVER_STATUS.SERVER_STATUS_IN_TRANS | SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT


class AsyncMySQLManager(PooledDatabaseManager[MySQLConnection]):
    """Pooled MySQL/MariaDB access returning ``Result``.

    ``AsyncMySQLManager(url, max_connections=10)`` with
    ``url = "mysql://user:pass@host:port/db"``; every other setting comes
    through ``options`` (:class:`DatabaseOptions`). ``connect`` replaces how a
    raw connection is made (a test seam).
    """

    backend = "mysql"
    bounds_result_bytes = True

    def __init__(
        self,
        url: str,
        max_connections: int | None = None,
        *,
        name: str | None = None,
        options: DatabaseOptions | None = None,
        connect: Callable[[], Awaitable[MySQLConnection]] | None = None,
    ) -> None:
        self._url = url
        self._target_url = parse_mysql_url(url)
        super().__init__(
            name=name,
            options=(options or DatabaseOptions()).with_max_connections(max_connections),
            connect=connect,
            close=close_connection,
        )

    def __repr__(self) -> str:
        return f"<AsyncMySQLManager {self.name!r} {redact_url(self._url)} {self._pool!r}>"

    @property
    def url(self) -> str:
        """The URL with its password masked."""
        return redact_url(self._url)

    @property
    def target(self) -> str:
        """The URL with its password masked."""
        return redact_url(self._url)

    def _target(self) -> str:
        return f"{self._target_url.host}:{self._target_url.port}"

    async def _default_connect(self) -> MySQLConnection:
        return await connect_mysql(
            self._target_url,
            timeout=self.options.acquire_timeout,
            statement_timeout=self.options.statement_timeout,
            remember_role=self.options.reset_session,
        )

    # -- connections ----------------------------------------------------------

    async def _check_connection(self, raw: MySQLConnection) -> bool:
        if not raw.connected or getattr(raw, "_stream_broken", False):
            return False  # asyncmy already saw the server close the stream
        try:
            await raw.ping(reconnect=False)
        except (MySQLError, OSError):
            return False
        return True

    def release(self, conn: PooledConnection[Any], *, clean: bool = True) -> None:
        """Return a connection; ``clean=False`` resets (or discards) it first.

        Synchronous bookkeeping plus tasks of their own, so a caller being
        cancelled cannot interrupt it: the connection always comes back or
        is closed.
        """
        raw: MySQLConnection = conn.raw
        if conn.cache.pop("interrupted", False):
            # A statement was cut off mid-flight: the stream is out of step
            # and the server may still be running it.
            self._pool.release(conn, discard=True)
            self._spawn(kill_thread(self._connect, raw.thread_id()))
            return
        if not raw.connected:
            self._pool.release(conn, discard=True)
            return
        if clean and not conn.needs_reset and not raw.get_transaction_status():
            self._pool.release(conn)
            return
        self._spawn(self._reset_and_release(conn))

    async def _reset_and_release(self, conn: PooledConnection[Any]) -> None:
        raw: MySQLConnection = conn.raw
        try:
            async with asyncio.timeout(_RESET_TIMEOUT):
                if self.options.reset_session:
                    await reset_connection(
                        raw, self._target_url.charset, self.options.statement_timeout
                    )
                    conn.cache["session_read_only"] = False
                else:
                    # Sent unconditionally: asyncmy does not track a server
                    # status of 0, so "autocommit off, no transaction" looks
                    # clean to it.
                    for statement in _RESET_STATEMENTS:
                        await execute_sql(raw, statement)
        except BaseException:
            logger.debug("discarding a connection whose reset failed", exc_info=True)
            raw.close()
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
        if guard is not None:
            require(classify_guarded(query), guard)
        sql, args = bind_parameters(query, normalize_params(params))
        read_only = read_only or self.options.read_only or guard is Access.READ
        max_rows = max_rows or self.options.max_rows
        max_bytes = max_result_bytes or self.options.max_result_bytes or NO_BYTE_CAP
        # Checkout itself, positionally: acquire()'s call, and a keyword
        # argument's slower one, saved on every query.
        async with Checkout(self, deadline, guard is not None) as conn:
            if guard is not None:
                outcome = await self._guarded(conn, sql, args, read_only, deadline, max_bytes)
            else:
                note_session_change(conn, query)
                await self._set_session_mode(conn, read_only, deadline)
                try:
                    outcome = await self._run(conn, sql, args, deadline, max_bytes)
                except (DatabaseConnectionError, ResultTooLargeError) as exc:
                    if not read_only and may_write(query):  # sent in autocommit mode
                        raise UnknownOutcomeError(
                            f"{exc}; the statement may have been applied"
                        ) from exc
                    raise
        return to_result(outcome, max_rows, query)

    def _leaves_clean(self, exc: BaseException) -> bool:
        # The server refused or timed out the statement and the session is
        # intact; a client-side interruption is caught by release() anyway.
        return isinstance(exc, (QueryError, OperationTimeoutError))

    async def _guarded(
        self,
        conn: PooledConnection[Any],
        sql: str,
        args: tuple[Any, ...] | None,
        read_only: bool,
        deadline: Deadline,
        max_bytes: int,
    ) -> Outcome:
        """One classified statement in a transaction iogate opens and ends.

        A reader's runs in a read-only session and transaction and is rolled
        back; a writer's is committed, and only a committed write is answered
        as a success. Nothing here leaves session state behind: the classifier
        let through no statement that sets any, and the server status is
        checked after it anyway.
        """
        await self._set_session_mode(conn, read_only, deadline)
        begin = "START TRANSACTION READ ONLY" if read_only else "START TRANSACTION"
        await self._run(conn, begin, None, deadline)
        try:
            outcome = await self._run(conn, sql, args, deadline, max_bytes)
            if conn.raw.server_status & _GUARDED_STATUS != _GUARDED_STATUS:
                conn.needs_reset = True
                raise QueryError("the statement changed iogate's transaction or session")
        except (QueryError, OperationTimeoutError):
            await self._rollback_quietly(conn, deadline)
            raise
        if read_only:
            await self._rollback_quietly(conn, deadline)
        else:
            await self._commit(conn, deadline, wrote=True)
        return outcome

    async def _rollback_quietly(self, conn: PooledConnection[Any], deadline: Deadline) -> None:
        """ROLLBACK; when it cannot be sent, release() resets or discards instead."""
        if conn.cache.get("interrupted"):
            return  # the stream is out of step: the connection is discarded
        try:
            await self._run(conn, "ROLLBACK", None, deadline)
        except IogateError:
            conn.needs_reset = True

    async def _commit(
        self, conn: PooledConnection[Any], deadline: Deadline, *, wrote: bool
    ) -> None:
        """COMMIT; once it is sent, a lost answer is ``unknown_outcome`` for a writer.

        A connection already lost before COMMIT could be sent took its
        transaction with it: that is a plain ``connection_error``.
        """
        raw: MySQLConnection = conn.raw
        if not raw.connected or getattr(raw, "_stream_broken", False):
            raise DatabaseConnectionError(
                "connection lost before COMMIT: the server rolled the transaction back"
            )
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            conn.needs_reset = True  # the reset rolls the transaction back
            raise deadline_error("COMMIT", started=False)
        try:
            await self._run(conn, "COMMIT", None, deadline)
        except (DatabaseConnectionError, OperationTimeoutError) as exc:
            if not wrote:
                raise
            raise UnknownOutcomeError(
                f"{exc} while committing: the transaction may have been applied"
            ) from exc

    async def _set_session_mode(
        self, conn: PooledConnection[Any], read_only: bool, deadline: Deadline
    ) -> None:
        """Make the session's transactions read-only, or read-write again.

        Read-only is set before every read-only call, never trusted from a
        previous one: a statement may have changed it since.
        """
        if read_only:
            await self._run(conn, "SET SESSION TRANSACTION READ ONLY", None, deadline)
            conn.cache["session_read_only"] = True
        elif conn.cache.get("session_read_only"):
            await self._run(conn, "SET SESSION TRANSACTION READ WRITE", None, deadline)
            conn.cache["session_read_only"] = False

    async def _run(
        self,
        conn: PooledConnection[Any],
        sql: str,
        args: tuple[Any, ...] | None,
        deadline: Deadline,
        max_bytes: int = NO_BYTE_CAP,
    ) -> Outcome:
        """Run one statement, mapping asyncmy's errors to iogate's.

        With ``max_bytes``, its result is metered (see :class:`ResultMeter`).
        """
        raw: MySQLConnection = conn.raw
        timeout = deadline.or_within(self._step_budget).remaining()
        if timeout is not None and timeout <= 0:
            raise deadline_error("the statement", started=False)
        meter = ResultMeter.of(raw) if max_bytes else None
        # map_error from an except clause, not `with MySQLErrors`: two calls
        # fewer per statement.
        try:
            async with asyncio.timeout(timeout):
                if meter is not None:
                    meter.arm(max_bytes)
                cursor = raw.cursor()
                await cursor.execute(sql, args)
                description = cursor.description
                rows = list(await cursor.fetchall()) if description else []
                outcome = Outcome(
                    columns=tuple(column[0] for column in description) if description else None,
                    rows=rows,
                    rowcount=count(cursor.rowcount),
                    last_insert_id=int(cursor.lastrowid or 0),
                )
                await cursor.close()
                return outcome
        except asyncio.CancelledError:
            conn.cache["interrupted"] = True  # see TimeoutError below
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                # Cut off mid-flight: the stream is out of step (release()
                # discards the connection and kills its server thread).
                conn.cache["interrupted"] = True
            elif meter is not None and meter.tripped and isinstance(exc, MySQLError):
                # The server may still be producing rows: kill its thread.
                conn.cache["interrupted"] = True
                raise ResultTooLargeError(max_bytes) from exc
            error = map_error(exc, timeout, self._target_url.password)
            if error is None:
                raise
            raise error from exc
        finally:
            if meter is not None:
                meter.budget = NO_BYTE_CAP

    # The steps of SQLTransaction (iogate.backends.base.TransactionDriver).

    async def _begin(self, tx: SQLTransaction) -> None:
        conn: PooledConnection[Any] = tx.conn
        await self._set_session_mode(conn, tx.read_only, tx.deadline)
        mode = "READ ONLY" if tx.read_only else "READ WRITE"
        await self._run(conn, f"START TRANSACTION {mode}", None, tx.deadline)

    async def _end(self, tx: SQLTransaction, *, commit: bool) -> None:
        # A guarded reader's transaction has nothing to commit and ends with
        # ROLLBACK too (sqlguard). One that cannot be rolled back is reset or
        # discarded by release(): rolled back either way.
        if commit and not (tx.guard is not None and tx.read_only):
            await self._commit(tx.conn, tx.deadline, wrote=not tx.read_only)
        else:
            await self._rollback_quietly(tx.conn, tx.deadline)

    async def _statement(self, tx: SQLTransaction, query: str, params: Params) -> Result:
        if tx.ended:
            return Result.fail(
                "the transaction was ended by an earlier statement; nothing more runs in it",
                "invalid_request",
                operation="query",
            )
        conn: PooledConnection[Any] = tx.conn
        if tx.guard is not None:
            require(classify_guarded(query), tx.guard)
        sql, args = bind_parameters(query, normalize_params(params))
        if tx.guard is None:
            note_session_change(conn, query)
        max_bytes = self.options.max_result_bytes or NO_BYTE_CAP
        outcome = await self._run(conn, sql, args, tx.deadline, max_bytes)
        if not conn.raw.get_transaction_status():
            # COMMIT, ROLLBACK or DDL (an implicit commit) ended it: later
            # statements would run outside the transaction, and outside its
            # read-only mode, so none may.
            tx.ended = True
            return Result.fail(
                "statement ended the transaction (COMMIT, ROLLBACK or an implicit "
                "commit by DDL); work before it may already be committed",
                "query_error",
                operation="query",
            )
        return to_result(outcome, self.options.max_rows, query)

    async def _ping(self) -> None:
        async with self.acquire(stateless=True) as conn:
            try:
                with MySQLErrors(password=self._target_url.password):
                    await conn.raw.ping(reconnect=False)
            except asyncio.CancelledError:
                conn.cache["interrupted"] = True
                raise


if TYPE_CHECKING:  # mypy proves the manager is a Resource
    _resource: Resource = AsyncMySQLManager("mysql://")
