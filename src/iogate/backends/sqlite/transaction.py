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

from iogate.backends.base import Transaction
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

__all__ = ["SQLiteTransaction", "open_transaction"]


@asynccontextmanager
async def open_transaction(
    manager: AsyncSQLiteManager, read_only: bool, deadline: Deadline, guard: Access | None
) -> AsyncIterator[Transaction]:
    """BEGIN on the writer, the block, then COMMIT unless a statement failed."""
    read_only = read_only or manager.options.read_only
    async with manager._writer_session(deadline) as writer:
        tx = SQLiteTransaction(manager, writer, deadline, guard)
        committed = False
        try:
            try:
                await manager._call(writer, begin, (read_only,), deadline)
            except sqlite3.Error as exc:
                raise map_error(exc) from exc
            yield tx
            if not tx.failed:
                try:
                    await writer.submit(exec_plain, ("COMMIT",))
                except sqlite3.Error as exc:
                    raise map_error(exc) from exc
                committed = True
                tx.status = "committed"
        finally:
            if not committed:
                tx.status = "rolled_back"
            # Queued before the writer is handed on, so it runs next in
            # the writer's thread even if this task is being cancelled;
            # shielded so that a cancellation cannot skip it.
            await asyncio.shield(writer.submit(end_session, (read_only,)))


class SQLiteTransaction(Transaction):
    """Statements of one block, each a job on the writer the block holds."""

    def __init__(
        self,
        manager: AsyncSQLiteManager,
        writer: Worker,
        deadline: Deadline,
        guard: Access | None = None,
    ) -> None:
        super().__init__(guard, manager)
        self._manager = manager
        self._writer = writer
        self._deadline = deadline

    async def _execute(self, query: str, params: Params) -> Result:
        verb, args = bind(query, normalize_params(params))
        limits = self._manager._limits
        run: Callable[..., Outcome] = run_statement
        job: tuple[Any, ...] = (query, args, limits)
        if self.guard is not None:
            # SQLite's authorizer refuses transaction control and the rest.
            run, job = run_authorized, (query, args, limits, self.guard)
        elif verb in TX_CONTROL:
            raise InvalidRequestError(f"{verb} inside transaction(): the block manages it")
        try:
            outcome = await self._manager._call(self._writer, run, job, self._deadline)
        except (sqlite3.Error, *BINDING_ERRORS) as exc:
            return Result.from_exception(
                map_error(exc), resource=self._manager.name, operation="query"
            )
        result = to_result(outcome, verb if self.guard is None else None)
        result.resource = self._manager.name
        return result
