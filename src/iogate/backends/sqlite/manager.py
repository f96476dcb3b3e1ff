"""``AsyncSQLiteManager``: which connection runs each statement, and how.

Reads are routed by their first keyword (SELECT, VALUES, EXPLAIN, WITH) to
a reader. A misrouted write is refused by the reader's ``query_only`` and
retried on the writer, so the routing can only cost time, never
correctness; and ``read_only=True`` runs on a reader, so SQLite itself
refuses any write. Other writes join the writer's group commit; statements
that must run alone (PRAGMA, VACUUM, ...) and transactions hold the writer
as a session (:mod:`.pool`, :mod:`.transaction`).

Guarded statements (a client key's SQL, ``guard=``) are never routed or
judged by their text: SQLite's authorizer decides (:mod:`.guard`). A
guarded read runs on a reader, a guarded write joins the writer's group
commit. A refused statement did nothing (it did not compile, or SQLite
reported nothing of it and its own savepoint or transaction is rolled
back), so it fails only its own caller.

:meth:`AsyncSQLiteManager.execute_many` runs a batch's group of identical
statements as one job on the writer, in one transaction; each statement is
still recorded as one of the manager's operations.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from iogate.backends.base import ManagerState, Transaction
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    ForbiddenStatementError,
    InvalidRequestError,
    IogateError,
    ResultTooLargeError,
)
from iogate.core.params import Params, normalize_params
from iogate.core.redact import redact_url
from iogate.core.result import Result
from iogate.core.sqlguard import Access

from .connection import UNLIMITED, Args, Limits, Outcome
from .dialect import (
    BINDING_ERRORS,
    INSERT_VERBS,
    READ_VERBS,
    READONLY_MESSAGE,
    SOLO_VERBS,
    TX_CONTROL,
    bind,
    map_error,
    to_result,
)
from .groups import group_read
from .pool import SQLiteConnections
from .statements import (
    run_guarded_alone,
    run_many,
    run_read_only,
    run_statement,
)
from .transaction import open_transaction
from .worker import WRITE_LATE, bounded

if TYPE_CHECKING:
    from iogate.core.resource import Resource

__all__ = ["DEFAULT_SQLITE_CONNECTIONS", "AsyncSQLiteManager"]

DEFAULT_SQLITE_CONNECTIONS = 5

perf_counter = time.perf_counter


class AsyncSQLiteManager(SQLiteConnections):
    """SQLite with WAL, parallel readers and a group-committing writer (seed 000).

    ``max_connections`` counts the writer: 5 means one writer and four
    readers. ``":memory:"`` uses a single connection (an in-memory database
    cannot be shared between connections without table locks).
    """

    backend = "sqlite"
    bounds_result_bytes = True

    def __init__(
        self,
        path: str,
        max_connections: int | None = None,
        *,
        name: str | None = None,
        options: DatabaseOptions | None = None,
    ) -> None:
        options = (
            options or DatabaseOptions(max_connections=DEFAULT_SQLITE_CONNECTIONS)
        ).with_max_connections(max_connections)
        super().__init__(path, options, name=name)
        self._limits: Limits = (options.max_rows, options.max_result_bytes)

    def __repr__(self) -> str:
        s = self.pool_stats()
        return (
            f"<AsyncSQLiteManager {self.name!r} {self.path!r} readers={len(self._readers)} "
            f"idle_readers={s['idle']} write_queue={self._writes_pending}>"
        )

    @property
    def target(self) -> str:
        """The database as given: a path, ``:memory:`` or a ``file:`` URI.

        A URI's query keeps its SQLite options (``mode=ro``...); a value
        that looks like a secret (``password=``, ``token=``..., as
        :func:`~iogate.core.redact.redact_url` knows them) is masked.
        """
        head, mark, query = self.path.partition("?")
        if not mark or not head.startswith("file:"):
            return self.path
        return head + redact_url(mark + query)

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
        verb, args = bind(query, normalize_params(params))
        if max_rows is None and max_result_bytes is None:
            limits = self._limits
        else:
            limits = (
                max_rows or self.options.max_rows,
                max_result_bytes or self.options.max_result_bytes,
            )
        if guard is not None:
            return await self._execute_guarded(
                query, args, deadline, read_only or self.options.read_only, limits, guard
            )
        if verb in TX_CONTROL:
            raise InvalidRequestError(
                f"{verb} is not accepted by execute_query: use manager.transaction()"
            )
        read_only = read_only or self.options.read_only
        try:
            if verb in READ_VERBS and self._readers:
                try:
                    outcome = await self._read(query, args, deadline, limits, group_read)
                except sqlite3.OperationalError as exc:
                    if read_only or READONLY_MESSAGE not in str(exc):
                        raise  # a misrouted write is retried on the writer
                    outcome = await self._write(query, args, deadline, limits)
            elif read_only and self._readers:
                # Any other statement runs alone: some (ATTACH, VACUUM, some
                # PRAGMAs) refuse to run inside a transaction or ignore it.
                outcome = await self._read(query, args, deadline, limits)
            elif verb in SOLO_VERBS or self._in_memory:
                outcome = await self._solo(query, args, deadline, limits, read_only)
            else:
                outcome = await self._write(query, args, deadline, limits)
        except (sqlite3.Error, *BINDING_ERRORS) as exc:
            raise map_error(exc) from exc
        rows, rowcount, truncated, rowid = outcome
        rows_affected = rowcount if rowcount >= 0 and verb not in READ_VERBS else None
        return Result.ok(
            rows,
            operation="query",
            rows_affected=rows_affected,
            truncated=truncated,
            last_insert_id=rowid if verb in INSERT_VERBS and rowcount == 1 else None,
        )

    async def _execute_guarded(
        self,
        query: str,
        args: Args,
        deadline: Deadline,
        read_only: bool,
        limits: Limits,
        access: Access,
    ) -> Result:
        """A client's statement: placed by its access, judged by SQLite's authorizer."""
        reading = read_only or access is Access.READ
        try:
            if not self._readers:
                async with self._writer_session(deadline) as writer:
                    job = (query, args, limits, access, reading)
                    outcome = await self._call(writer, run_guarded_alone, job, deadline)
            elif reading:
                outcome = await self._read(query, args, deadline, limits, group_read, access)
            else:
                outcome = await self._write(query, args, deadline, limits, access)
        except (sqlite3.Error, *BINDING_ERRORS) as exc:
            raise map_error(exc) from exc
        return to_result(outcome, None)

    async def _solo(
        self,
        query: str,
        args: Args,
        deadline: Deadline,
        limits: Limits,
        read_only: bool,
    ) -> Outcome:
        """Run alone on the writer, outside any group transaction."""
        async with self._writer_session(deadline) as writer:
            fn = run_read_only if read_only else run_statement
            return await self._call(writer, fn, (query, args, limits), deadline)

    def _transaction(
        self, *, read_only: bool, deadline: Deadline, guard: Access | None = None
    ) -> AbstractAsyncContextManager[Transaction]:
        return open_transaction(self, read_only, deadline, guard)

    async def _ping(self) -> None:
        if self._readers:
            await self._read("SELECT 1", (), Deadline.never(), UNLIMITED)
        else:
            async with self._writer_session(Deadline.never()) as writer:
                await writer.submit(run_statement, ("SELECT 1", (), UNLIMITED))

    # -- a batch's groups ---------------------------------------------------------

    async def execute_many(
        self,
        query: str,
        params_list: Sequence[Params],
        *,
        deadline: Deadline | None = None,
        guard: Access | None = None,
    ) -> list[Result] | None:
        """One statement per parameter set, in one transaction: all or nothing.

        Returns a Result per parameter set, each recorded as one of the
        manager's operations (stats and events, as when run alone, each
        timed as an equal share of the group), or None when a statement
        failed and the transaction was rolled back: nothing was written; run
        them one by one to find which (as the batch runner does). The group
        runs as one job on the writer, held as a session. A statement
        ``guard`` refuses fails every Result. A passed deadline, a writer
        busy beyond ``acquire_timeout`` or a closed manager raises, each
        statement recorded as failed with that error.
        """
        started = perf_counter()
        if deadline is None:
            deadline = self._default_deadline()
        try:
            bound = [bind(query, normalize_params(params)) for params in params_list]
        except IogateError:
            return None  # one by one, only the statement with bad parameters fails
        if not bound:
            return []
        verb = bound[0][0]
        if guard is None and verb in TX_CONTROL:
            refused = InvalidRequestError(f"{verb} is not accepted by execute_many")
            return self._fail_each(refused, len(bound), started)
        read_only = guard is Access.READ or self.options.read_only
        job = (query, [args for _, args in bound], self._limits, guard, read_only)
        try:
            if self.state is not ManagerState.OPEN:
                await self._ensure_open(deadline)
            async with self._writer_session(deadline) as writer:
                outcomes = await bounded(writer.submit(run_many, job), deadline, WRITE_LATE)
        except ForbiddenStatementError as exc:
            return self._fail_each(exc, len(bound), started)
        except (sqlite3.Error, *BINDING_ERRORS, ResultTooLargeError):
            return None  # rolled back
        except IogateError as exc:
            self._fail_each(exc, len(bound), started)
            raise
        share = (perf_counter() - started) / len(outcomes)
        results = []
        for outcome in outcomes:
            result = to_result(outcome, verb if guard is None else None)
            result.resource = self.name
            results.append(self._finish(result, perf_counter() - share))
        return results

    def _fail_each(self, error: IogateError, count: int, started: float) -> list[Result]:
        """``count`` recorded failures with ``error``, one per statement."""
        failures = []
        for _ in range(count):
            failure = Result.from_exception(error, resource=self.name, operation="query")
            failures.append(self._finish(failure, started))
        return failures


if TYPE_CHECKING:

    def _is_a_resource(manager: AsyncSQLiteManager) -> Resource:
        return manager  # mypy: AsyncSQLiteManager satisfies the Resource protocol
