"""``manager.transaction()`` on SQLite: the writer held as a session.

The block holds the writer (:meth:`~.pool.SQLiteConnections._writer_session`):
writes from elsewhere wait on the loop side meanwhile, so none runs inside
the block's transaction. A read-only block runs with ``query_only`` on, so
SQLite itself refuses writes, and reads see one snapshot. The writer is
always handed on as it was found: no transaction open, writable.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from iogate.backends.base import SQLTransaction, Transaction
from iogate.core.deadline import Deadline
from iogate.core.errors import InvalidRequestError
from iogate.core.params import Params, normalize_params
from iogate.core.result import Result
from iogate.core.sqlguard import Access

from .connection import Outcome
from .dialect import BINDING_ERRORS, TX_CONTROL, bind, map_error, to_result
from .statements import (
    begin,
    end_session,
    exec_plain,
    run_authorized,
    run_statement,
)
from .worker import Worker

if TYPE_CHECKING:
    from .manager import AsyncSQLiteManager

__all__ = ["SQLiteSteps", "open_transaction"]


@asynccontextmanager
async def open_transaction(
    manager: AsyncSQLiteManager, read_only: bool, deadline: Deadline, guard: Access | None
) -> AsyncIterator[Transaction]:
    """BEGIN on the writer, the block, then COMMIT unless a statement failed."""
    read_only = read_only or manager.options.read_only
    async with manager._writer_session(deadline) as writer:
        tx = SQLTransaction(
            SQLiteSteps(manager),
            writer,
            deadline,
            read_only=read_only,
            guard=guard,
            manager=manager,
        )
        try:
            async with tx.block():
                yield tx
        finally:
            # Queued before the writer is handed on, so it runs next in the
            # writer's thread (rolling back what did not commit) even if
            # this task is being cancelled; shielded so that a cancellation
            # cannot skip it.
            await asyncio.shield(writer.submit(end_session, (read_only,)))


class SQLiteSteps:
    """How a transaction begins, ends and runs a statement on the writer it holds
    (the :class:`~iogate.backends.base.TransactionDriver` of SQLite)."""

    def __init__(self, manager: AsyncSQLiteManager) -> None:
        self._manager = manager

    async def _begin(self, tx: SQLTransaction) -> None:
        try:
            await self._manager._call(tx.conn, begin, (tx.read_only,), tx.deadline)
        except sqlite3.Error as exc:
            raise map_error(exc) from exc

    async def _end(self, tx: SQLTransaction, *, commit: bool) -> None:
        # A rollback is end_session's, after the block, whatever happened.
        if commit:
            writer: Worker = tx.conn
            try:
                await writer.submit(exec_plain, ("COMMIT",))
            except sqlite3.Error as exc:
                raise map_error(exc) from exc

    async def _statement(self, tx: SQLTransaction, query: str, params: Params) -> Result:
        manager = self._manager
        verb, args = bind(query, normalize_params(params))
        limits = manager._limits
        run: Callable[..., Outcome] = run_statement
        job: tuple[Any, ...] = (query, args, limits)
        if tx.guard is not None:
            # SQLite's authorizer refuses transaction control and the rest.
            run, job = run_authorized, (query, args, limits, tx.guard)
        elif verb in TX_CONTROL:
            raise InvalidRequestError(f"{verb} inside transaction(): the block manages it")
        try:
            outcome = await manager._call(tx.conn, run, job, tx.deadline)
        except (sqlite3.Error, *BINDING_ERRORS) as exc:
            return Result.from_exception(map_error(exc), resource=manager.name, operation="query")
        result = to_result(outcome, verb if tx.guard is None else None)
        result.resource = manager.name
        return result
