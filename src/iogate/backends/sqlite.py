"""SQLite on aiosqlite: parallel readers, one writer, group commit.

Layout: ``readers`` connections opened with ``PRAGMA query_only = ON`` serve
reads in parallel (WAL lets them run beside the writer), each read queued on
the least-loaded reader's thread; one writer
connection takes every write from a queue. Consecutive queued writes are
committed together in one transaction (group commit), each inside its own
SAVEPOINT, so one failing statement fails only its own caller and concurrent
writers never meet "database is locked".

Every operation costs one hop to the connection's thread: the statement,
the fetch and the row conversion run together there (aiosqlite's
``Connection._execute`` takes the function; see docs/decisions.md).

Reads are routed by their first keyword (SELECT, VALUES, EXPLAIN, WITH). A
misrouted write is refused by the reader's ``query_only`` and retried on the
writer, so the routing can only cost time, never correctness; and
``read_only=True`` runs on a reader, so SQLite itself refuses any write.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiosqlite

from iogate.backends.base import AsyncDatabaseManager, Transaction
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    ClosedError,
    DatabaseConnectionError,
    InvalidRequestError,
    IogateError,
    OperationTimeoutError,
    PoolExhaustedError,
    QueryError,
    ReadOnlyError,
)
from iogate.core.params import Params, check_count, normalize_params
from iogate.core.result import Result

__all__ = ["AsyncSQLiteManager"]

logger = logging.getLogger("iogate.sqlite")

T = TypeVar("T")

DEFAULT_SQLITE_CONNECTIONS = 5
_MAX_GROUP = 512
_READ_VERBS = frozenset({"SELECT", "VALUES", "EXPLAIN", "WITH"})
# Statements that manage transactions themselves or cannot run inside one.
_SOLO_VERBS = frozenset({"VACUUM", "PRAGMA", "ATTACH", "DETACH", "REINDEX", "ANALYZE"})
_TX_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})
_LEADING = re.compile(r"\s*(?:(?:--[^\n]*\n)|(?:/\*.*?\*/)|\s)*\s*([A-Za-z]+)", re.DOTALL)
_READONLY_MESSAGE = "attempt to write a readonly database"

# (rows, rowcount, truncated) computed in the connection's thread.
_Outcome = tuple[list[dict[str, Any]], int, bool]


def _first_verb(query: str) -> str:
    match = _LEADING.match(query)
    return match.group(1).upper() if match else ""


def _convert(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _run_statement(
    conn: sqlite3.Connection, query: str, args: tuple[Any, ...], max_rows: int | None
) -> _Outcome:
    """Execute and fetch in one go (runs in the connection's thread)."""
    cursor = conn.execute(query, args)
    try:
        if cursor.description is None:
            return [], cursor.rowcount, False
        keys = [column[0] for column in cursor.description]
        raw_rows = cursor.fetchmany(max_rows + 1) if max_rows is not None else cursor.fetchall()
        truncated = max_rows is not None and len(raw_rows) > max_rows
        if truncated:
            raw_rows = raw_rows[:max_rows]
        rows = [
            {
                k: (v if type(v) is not bytes else _convert(v))
                for k, v in zip(keys, row, strict=True)
            }
            for row in raw_rows
        ]
        return rows, cursor.rowcount, truncated
    finally:
        cursor.close()


def _run_group(
    conn: sqlite3.Connection, items: list[tuple[str, tuple[Any, ...], int | None]]
) -> list[_Outcome | BaseException]:
    """Run queued writes in one transaction, each isolated by a savepoint."""
    if len(items) == 1:
        query, args, max_rows = items[0]
        try:
            return [_run_statement(conn, query, args, max_rows)]
        except sqlite3.Error as exc:
            return [exc]
    outcomes: list[_Outcome | BaseException] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for query, args, max_rows in items:
            conn.execute("SAVEPOINT iogate_write")
            try:
                outcomes.append(_run_statement(conn, query, args, max_rows))
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK TO iogate_write")
                outcomes.append(exc)
            conn.execute("RELEASE iogate_write")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [exc for _ in items]
    return outcomes


def _setup_connection(conn: sqlite3.Connection, busy_ms: int, synchronous: str) -> None:
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")


def _enable_wal(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    return str(row[0]) if row else ""


def _query_only(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA query_only = ON")


def _map_error(exc: sqlite3.Error) -> IogateError:
    message = str(exc)
    if _READONLY_MESSAGE in message or "query_only" in message:
        return ReadOnlyError(f"the database refused a write in read-only mode: {message}")
    if "Incorrect number of bindings" in message:
        return QueryError(message)
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in message:
        return DatabaseConnectionError(message)
    return QueryError(message)


@dataclass(slots=True, eq=False)
class _WriteRequest:
    query: str
    args: tuple[Any, ...]
    max_rows: int | None
    future: asyncio.Future[_Outcome] = field(repr=False)


class _Connection:
    """An aiosqlite connection with a one-hop call into its thread."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        # aiosqlite runs ``fn`` in the connection's own thread; the sqlite3
        # connection object is only ever touched from there.
        raw: sqlite3.Connection = self._conn._conn
        result: T = await self._conn._execute(fn, raw, *args)  # type: ignore[no-untyped-call]
        return result

    async def close(self) -> None:
        await self._conn.close()


class AsyncSQLiteManager(AsyncDatabaseManager):
    """SQLite with WAL, parallel readers and a group-committing writer (seed 000).

    ``max_connections`` counts the writer: 5 means one writer and four
    readers. ``":memory:"`` uses a single connection (an in-memory database
    cannot be shared between connections without table locks).
    """

    backend = "sqlite"

    def __init__(
        self,
        path: str,
        max_connections: int | None = None,
        *,
        name: str | None = None,
        options: DatabaseOptions | None = None,
    ) -> None:
        super().__init__(name=name)
        options = (
            options or DatabaseOptions(max_connections=DEFAULT_SQLITE_CONNECTIONS)
        ).with_max_connections(max_connections)
        self.options = options
        self.path = path
        self._in_memory = path == ":memory:" or "mode=memory" in path
        self._reader_count = 0 if self._in_memory else max(1, options.max_connections - 1)
        self._writer: _Connection | None = None
        self._readers: list[_Connection] = []
        # Statements queued or running per reader: reads are spread over the
        # least-loaded reader and queue in its thread back to back, so a
        # reader never idles while the event loop hands out the next read.
        self._reader_load: list[int] = []
        self._write_queue: deque[_WriteRequest] = deque()
        self._write_ready = asyncio.Event()
        self._writer_lock = asyncio.Lock()
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        s = self.pool_stats()
        return (
            f"<AsyncSQLiteManager {self.name!r} {self.path!r} readers={s['readers']} "
            f"idle_readers={s['idle']} write_queue={s['write_queue']}>"
        )

    def pool_stats(self) -> dict[str, int]:
        busy = sum(1 for load in self._reader_load if load)
        return {
            "size": len(self._readers) + (1 if self._writer else 0),
            "max_size": self._reader_count + 1,
            "readers": len(self._readers),
            "in_use": busy + (1 if self._writer_lock.locked() else 0),
            "idle": len(self._readers) - busy,
            "waiting": sum(max(0, load - 1) for load in self._reader_load),
            "write_queue": len(self._write_queue),
        }

    # -- lifecycle ------------------------------------------------------------

    async def _connect(self, *, reader: bool) -> _Connection:
        uri = self.path.startswith("file:")
        try:
            raw = await aiosqlite.connect(
                self.path, isolation_level=None, check_same_thread=False, uri=uri
            )
        except sqlite3.Error as exc:
            raise DatabaseConnectionError(f"cannot open {self.path!r}: {exc}") from exc
        conn = _Connection(raw)
        try:
            await conn.call(
                _setup_connection,
                int(self.options.busy_timeout * 1000),
                self.options.synchronous.upper(),
            )
            if reader:
                await conn.call(_query_only)
        except sqlite3.Error as exc:
            await conn.close()
            raise DatabaseConnectionError(f"cannot set up {self.path!r}: {exc}") from exc
        return conn

    async def _open(self) -> None:
        writer = await self._connect(reader=False)
        if not self._in_memory:
            try:
                await writer.call(_enable_wal)
            except sqlite3.Error as exc:
                await writer.close()
                raise DatabaseConnectionError(f"cannot enable WAL on {self.path!r}: {exc}") from exc
        self._writer = writer
        try:
            for _ in range(self._reader_count):
                reader = await self._connect(reader=True)
                self._readers.append(reader)
                self._reader_load.append(0)
        except BaseException:
            await self._close()
            raise
        self._writer_task = asyncio.get_running_loop().create_task(
            self._write_loop(), name=f"iogate-sqlite-writer-{self.name}"
        )

    async def _close(self) -> None:
        self._closing = True
        self._write_ready.set()
        if self._writer_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        for request in self._write_queue:
            if not request.future.done():
                request.future.set_exception(ClosedError(f"{self.name}: manager closed"))
        self._write_queue.clear()
        async with self._writer_lock:
            connections = [*self._readers, *([self._writer] if self._writer else [])]
            self._readers.clear()
            self._reader_load.clear()
            self._writer = None
            for conn in connections:
                with contextlib.suppress(Exception):
                    await conn.close()

    # -- reads ----------------------------------------------------------------

    async def _read(
        self, query: str, args: tuple[Any, ...], deadline: Deadline, max_rows: int | None
    ) -> _Outcome:
        loads = self._reader_load
        index = loads.index(min(loads))
        loads[index] += 1
        try:
            return await self._call_with_deadline(
                self._readers[index], _run_statement, deadline, query, args, max_rows
            )
        finally:
            if index < len(loads):  # the manager may have closed meanwhile
                loads[index] -= 1

    # -- writes ---------------------------------------------------------------

    async def _write(
        self, query: str, args: tuple[Any, ...], deadline: Deadline, max_rows: int | None
    ) -> _Outcome:
        if self._closing:
            raise ClosedError(f"{self.name}: manager closed")
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._write_queue.append(_WriteRequest(query, args, max_rows, future))
        self._write_ready.set()
        timeout = deadline.remaining()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise OperationTimeoutError(
                f"write not finished within the deadline ({timeout:.3g}s); "
                "it may still be committed"
            ) from None

    async def _write_loop(self) -> None:
        while True:
            await self._write_ready.wait()
            self._write_ready.clear()
            while self._write_queue:
                group: list[_WriteRequest] = []
                while self._write_queue and len(group) < _MAX_GROUP:
                    request = self._write_queue.popleft()
                    if not request.future.done():  # skip callers that gave up
                        group.append(request)
                if group:
                    await self._commit_group(group)
            if self._closing:
                return

    async def _commit_group(self, group: list[_WriteRequest]) -> None:
        items = [(r.query, r.args, r.max_rows) for r in group]
        async with self._writer_lock:
            writer = self._writer
            if writer is None:
                outcomes: list[_Outcome | BaseException] = [
                    ClosedError(f"{self.name}: manager closed") for _ in group
                ]
            else:
                try:
                    outcomes = await writer.call(_run_group, items)
                except BaseException as exc:  # the thread itself failed
                    outcomes = [exc for _ in group]
        for request, outcome in zip(group, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    # -- operations -------------------------------------------------------------

    async def _execute(
        self,
        query: str,
        params: Params,
        *,
        deadline: Deadline,
        read_only: bool,
        max_rows: int | None,
    ) -> Result:
        args = normalize_params(params)
        check_count(query, args, "qmark")
        verb = _first_verb(query)
        if verb in _TX_CONTROL:
            raise InvalidRequestError(
                f"{verb} is not accepted by execute_query: use manager.transaction()"
            )
        max_rows = max_rows or self.options.max_rows
        read_only = read_only or self.options.read_only
        try:
            if read_only and self._readers:
                outcome = await self._read(query, args, deadline, max_rows)
            elif verb in _READ_VERBS and self._readers:
                try:
                    outcome = await self._read(query, args, deadline, max_rows)
                except sqlite3.OperationalError as exc:
                    if _READONLY_MESSAGE not in str(exc):
                        raise
                    outcome = await self._write(query, args, deadline, max_rows)
            elif verb in _SOLO_VERBS or self._in_memory:
                outcome = await self._solo(query, args, deadline, max_rows, read_only)
            else:
                outcome = await self._write(query, args, deadline, max_rows)
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc
        rows, rowcount, truncated = outcome
        rows_affected = rowcount if rowcount >= 0 and verb not in _READ_VERBS else None
        return Result.ok(rows, operation="query", rows_affected=rows_affected, truncated=truncated)

    async def _solo(
        self,
        query: str,
        args: tuple[Any, ...],
        deadline: Deadline,
        max_rows: int | None,
        read_only: bool,
    ) -> _Outcome:
        """Run alone on the writer, outside any group transaction."""
        async with self._writer_session(deadline) as writer:
            if read_only:
                return await self._call_with_deadline(
                    writer, _run_read_only, deadline, query, args, max_rows
                )
            return await self._call_with_deadline(
                writer, _run_statement, deadline, query, args, max_rows
            )

    @asynccontextmanager
    async def _writer_session(self, deadline: Deadline) -> AsyncIterator[_Connection]:
        timeout = deadline.cap(self.options.acquire_timeout) or 0.0
        try:
            async with asyncio.timeout(timeout):
                await self._writer_lock.acquire()
        except TimeoutError:
            raise PoolExhaustedError(f"SQLite writer busy for more than {timeout:.3g}s") from None
        try:
            if self._writer is None:
                raise ClosedError(f"{self.name}: manager closed")
            yield self._writer
        finally:
            self._writer_lock.release()

    async def _call_with_deadline(
        self, conn: _Connection, fn: Callable[..., T], deadline: Deadline, *args: Any
    ) -> T:
        timeout = deadline.remaining()
        if timeout is None:
            return await conn.call(fn, *args)
        task = asyncio.ensure_future(conn.call(fn, *args))
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            # The statement keeps running in its thread; wait for it there so
            # the connection is free before anyone else uses it.
            with contextlib.suppress(BaseException):
                await task
            raise OperationTimeoutError(
                f"statement did not finish within the deadline ({timeout:.3g}s)"
            ) from None

    @asynccontextmanager
    async def _transaction_impl(
        self, read_only: bool, deadline: Deadline
    ) -> AsyncIterator[Transaction]:
        read_only = read_only or self.options.read_only
        # A read-only transaction holds the writer with query_only on: SQLite
        # itself refuses writes, and reads see one consistent snapshot.
        begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        async with self._writer_session(deadline) as writer:
            if read_only:
                await writer.call(_exec_plain, "PRAGMA query_only = ON")
            try:
                async with self._sqlite_transaction(writer, deadline, begin) as tx:
                    yield tx
            finally:
                if read_only:
                    await asyncio.shield(writer.call(_exec_plain, "PRAGMA query_only = OFF"))

    @asynccontextmanager
    async def _sqlite_transaction(
        self, conn: _Connection, deadline: Deadline, begin: str
    ) -> AsyncIterator[Transaction]:
        tx = _SQLiteTransaction(self, conn, deadline)
        try:
            await conn.call(_exec_plain, begin)
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc
        committed = False
        try:
            yield tx
            if not tx.failed:
                try:
                    await conn.call(_exec_plain, "COMMIT")
                except sqlite3.Error as exc:
                    raise _map_error(exc) from exc
                committed = True
                tx.status = "committed"
        finally:
            if not committed:
                tx.status = "rolled_back"
                # Shielded: the rollback must finish before the connection
                # is handed on, even if this task is being cancelled.
                await asyncio.shield(conn.call(_rollback_if_active))

    def _transaction(
        self, *, read_only: bool, deadline: Deadline
    ) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction_impl(read_only, deadline)

    async def _ping(self) -> None:
        if self._readers:
            await self._read("SELECT 1", (), Deadline.never(), None)
        else:
            async with self._writer_session(Deadline.never()) as writer:
                await writer.call(_run_statement, "SELECT 1", (), None)


def _exec_plain(conn: sqlite3.Connection, statement: str) -> None:
    conn.execute(statement)


def _rollback_if_active(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _run_read_only(
    conn: sqlite3.Connection, query: str, args: tuple[Any, ...], max_rows: int | None
) -> _Outcome:
    conn.execute("PRAGMA query_only = ON")
    try:
        return _run_statement(conn, query, args, max_rows)
    finally:
        conn.execute("PRAGMA query_only = OFF")


class _SQLiteTransaction(Transaction):
    def __init__(self, manager: AsyncSQLiteManager, conn: _Connection, deadline: Deadline) -> None:
        super().__init__()
        self._manager = manager
        self._conn = conn
        self._deadline = deadline

    async def _execute(self, query: str, params: Params) -> Result:
        args = normalize_params(params)
        check_count(query, args, "qmark")
        verb = _first_verb(query)
        if verb in _TX_CONTROL:
            raise InvalidRequestError(f"{verb} inside transaction(): the block manages it")
        try:
            rows, rowcount, truncated = await self._manager._call_with_deadline(
                self._conn,
                _run_statement,
                self._deadline,
                query,
                args,
                self._manager.options.max_rows,
            )
        except sqlite3.Error as exc:
            return Result.from_exception(
                _map_error(exc), resource=self._manager.name, operation="query"
            )
        rows_affected = rowcount if rowcount >= 0 and verb not in _READ_VERBS else None
        result = Result.ok(
            rows, operation="query", rows_affected=rows_affected, truncated=truncated
        )
        result.resource = self._manager.name
        return result
