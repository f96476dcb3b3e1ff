"""SQLite: parallel readers, one group-committing writer, a thread per connection.

Layout: ``readers`` connections opened with ``PRAGMA query_only = ON`` serve
reads (WAL lets them run beside the writer); one writer connection takes
every write.

Threads: each sqlite3 connection lives in its own worker thread, the only
thread that ever touches it. The event loop hands a worker jobs through a
``SimpleQueue``; the worker drains everything queued, runs it back to back
and hands the outcomes back with one ``call_soon_threadsafe`` per batch, so
under load one thread hop carries dozens of statements (docs/decisions.md:
this replaced aiosqlite, whose hop costs a future, a wakeup and a callback
per call). A job whose caller has given up (cancelled, deadline passed)
before it starts is skipped. One that is running when its caller gives up,
or that runs longer than ``statement_timeout``, is interrupted by SQLite's
progress handler (:class:`_JobClock`) and rolled back, so the thread is free
for the next job; a statement still runs fully or not at all.

Result caps: reading stops at ``max_rows + 1`` rows; with
``max_result_bytes`` rows are read one by one and the result refused once
their estimated size passes it, and SQLite refuses to build any one value
larger than it (SQLITE_LIMIT_LENGTH), so a 150 MB value never exists.

Batches: consecutive writes in a batch commit as one transaction (group
commit), so concurrent writers never meet "database is locked", and a
statement that fails fails only its own caller; a write's result is handed
back only after its COMMIT. Consecutive reads share one read transaction:
one snapshot, taken after each of them was queued. Reads pile onto the
first reader not stuck on a long statement (see ``_pick_reader``).

Reads are routed by their first keyword (SELECT, VALUES, EXPLAIN, WITH). A
misrouted write is refused by the reader's ``query_only`` and retried on the
writer, so the routing can only cost time, never correctness; and
``read_only=True`` runs on a reader, so SQLite itself refuses any write.
Transactions and statements that must run alone (PRAGMA, VACUUM, ...) hold
the writer as a session; writes arriving meanwhile wait on the loop side, so
they never run inside the session's transaction.

Guarded statements (a client key's SQL, ``guard=``) are never routed or
judged by their text: SQLite's authorizer decides (``guard_sqlite``). A
guarded read runs on a reader inside a read transaction ended by ROLLBACK
(the batch's shared one, or its own); a guarded write joins the writer's
group commit (or commits alone) and is answered only after COMMIT. A refused
statement did nothing (it did not compile, or SQLite reported nothing of it
and its own savepoint or transaction is rolled back), so it fails only its
own caller.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import logging
import math
import queue
import re
import sqlite3
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from sys import getsizeof
from typing import Any, TypeVar

from iogate.backends.base import AsyncDatabaseManager, Transaction
from iogate.backends.guard_sqlite import GuardableConnection, connection_guard, guarded_text
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    ClosedError,
    DatabaseConnectionError,
    InvalidRequestError,
    IogateError,
    OperationTimeoutError,
    ParameterError,
    PoolExhaustedError,
    QueryError,
    ReadOnlyError,
    ResultTooLargeError,
)
from iogate.core.params import Params, count_placeholders, normalize_params
from iogate.core.resource import PoolStats
from iogate.core.result import Result
from iogate.core.sqlguard import Access

__all__ = ["AsyncSQLiteManager"]

logger = logging.getLogger("iogate.sqlite")

T = TypeVar("T")

DEFAULT_SQLITE_CONNECTIONS = 5
# Most jobs one thread hop drains from its queue; also bounds a group commit.
_MAX_BATCH = 512
# A worker running a long batch hands back what it has finished at least this
# often (seconds), so a slow statement does not hold finished ones back.
_FLUSH_AFTER = 0.001
# A reader busy with one statement for longer than this (seconds) is passed
# over for new reads (see AsyncSQLiteManager._pick_reader).
_STALLED_AFTER = 0.001
# sqlite3's per-connection cache of prepared statements.
_CACHED_STATEMENTS = 256
# Queries up to this length have their keyword and placeholder count cached.
_ANALYSIS_CACHE_CHARS = 4096
_READ_VERBS = frozenset({"SELECT", "VALUES", "EXPLAIN", "WITH"})
# Statements whose rowid (cursor.lastrowid) is reported as last_insert_id
# when they wrote one row (docs/guide.md, "Result shape").
_INSERT_VERBS = frozenset({"INSERT", "REPLACE"})
# Statements that manage transactions themselves or cannot run inside one.
_SOLO_VERBS = frozenset({"VACUUM", "PRAGMA", "ATTACH", "DETACH", "REINDEX", "ANALYZE"})
_TX_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})
_LEADING = re.compile(r"\s*(?:(?:--[^\n]*\n)|(?:/\*.*?\*/)|\s)*\s*([A-Za-z]+)", re.DOTALL)
_READONLY_MESSAGE = "attempt to write a readonly database"
# Raised by sqlite3 while binding a parameter, outside its own exception tree.
_BINDING_ERRORS = (OverflowError, UnicodeEncodeError)
# SQLite calls the progress handler every this many virtual machine steps
# (some 20-50 ms of work): how late a statement may stop after its deadline.
# Each call takes the GIL from the event loop, and SQLite counts the steps of
# a cached statement across its runs, so a point query (20-30 steps) calls it
# once in tens of thousands of runs; at 10,000 steps it cost point reads 7 %.
_PROGRESS_STEPS = 1_000_000
_INTERRUPTED = "interrupted"
_TOO_BIG = "too big"  # SQLITE_TOOBIG: a value over SQLITE_LIMIT_LENGTH
# What a row counts against max_result_bytes besides its values: the tuple
# it is read as, then the dict it is answered as.
_ROW_BYTES = 256

# (rows, rowcount, truncated, lastrowid) computed in the connection's thread;
# lastrowid only for a statement that returned no rows.
_Outcome = tuple[list[dict[str, Any]], int, bool, int | None]
# (function run as fn(conn, *args), args, the caller's future)
_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
# (future, result or exception, succeeded)
_Completion = tuple[asyncio.Future[Any], Any, bool]


# A statement's result caps, (max_rows, max_result_bytes); None is no cap. A
# plain tuple: one is built per call, and a NamedTuple costs ten times more.
_Limits = tuple[int | None, int | None]
# Statement arguments as the driver binds them: by position (``?``), or by
# name for ``$n`` placeholders (see ``_bind``).
_Args = tuple[Any, ...] | dict[str, Any]
_UNLIMITED: _Limits = (None, None)
_WAL_RETRY_PAUSE = 0.02  # seconds between tries to switch a new file to WAL


class _JobClock:
    """When the running job's statement must stop; asked by SQLite itself.

    Installed as the connection's progress handler, so SQLite calls
    :meth:`check` every :data:`_PROGRESS_STEPS` steps of a long statement
    and interrupts it when the answer is nonzero: once its caller has given
    up (the job's future is cancelled, as it is at the request's deadline)
    or once it has run ``statement_timeout`` seconds. The thread is then
    free for the next job; an interrupted write rolls back its whole
    transaction (see :func:`_run_group`). Written and read in the
    connection's thread only; the future's state is set by the loop.
    """

    __slots__ = ("expires_at", "running", "timeout")

    def __init__(self, statement_timeout: float | None) -> None:
        self.timeout = statement_timeout or math.inf
        self.running: asyncio.Future[Any] | None = None
        self.expires_at = math.inf

    def start(self, future: asyncio.Future[Any]) -> None:
        self.running = future
        self.expires_at = time.perf_counter() + self.timeout

    def check(self) -> int:
        running = self.running
        if running is not None and running.cancelled():
            return 1
        return 1 if time.perf_counter() > self.expires_at else 0


class _Connection(GuardableConnection):
    """A worker's sqlite3 connection and its per-connection state."""

    clock: _JobClock
    # SQLITE_LIMIT_LENGTH as the connection was opened, and as last set.
    default_length: int
    length_limit: int


class _TransactionLost(Exception):
    """A statement's failure ended the group's transaction (SQLite rolls
    back the whole transaction of an interrupted write)."""

    def __init__(self, future: asyncio.Future[Any], error: Exception) -> None:
        super().__init__(str(error))
        self.future = future
        self.error = error


# -- statement analysis (event loop) ---------------------------------------------


def _first_verb(query: str) -> str:
    match = _LEADING.match(query)
    return match.group(1).upper() if match else ""


def _shape(query: str) -> tuple[str, int | None, bool]:
    """First keyword, placeholders expected, and whether they are ``$n``.

    ``?`` (and ``?NNN``) bind by position. ``$1..$n`` are, to SQLite, named
    parameters numbered in order of appearance, so ``$2 ... $1`` bound by
    position would swap the values: they are bound by name instead (the
    driver looks ``$2`` up as key ``"2"``), which is what PostgreSQL's
    ``$n`` means.
    """
    qmarks = count_placeholders(query, "qmark")
    dollars = count_placeholders(query, "dollar") if "$" in query else 0
    if qmarks and dollars:
        raise ParameterError("query mixes ? and $n placeholders; use one style")
    if dollars:
        return _first_verb(query), dollars, True
    return _first_verb(query), qmarks, False


_analyse_cached = functools.lru_cache(maxsize=1024)(_shape)


def _analyse(query: str) -> tuple[str, int | None, bool]:
    """``_shape``, cached, as services repeat their queries."""
    if len(query) <= _ANALYSIS_CACHE_CHARS:
        return _analyse_cached(query)
    return _shape(query)


def _bind(query: str, args: tuple[Any, ...]) -> tuple[str, _Args]:
    """The first keyword and the arguments as the driver binds them."""
    verb, placeholders, numbered = _analyse(query)
    if placeholders is not None and placeholders != len(args):
        raise ParameterError(
            f"query expects {placeholders} parameter{'s' if placeholders != 1 else ''}"
            f", got {len(args)}"
        )
    if numbered:
        return verb, {str(position): value for position, value in enumerate(args, 1)}
    return verb, args


# -- statements (connection threads) ------------------------------------------


def _convert(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def _run_statement(
    conn: _Connection, query: str, args: _Args, limits: _Limits = _UNLIMITED
) -> _Outcome:
    """Execute and fetch in one go (runs in the connection's thread).

    Reading stops at ``max_rows + 1`` rows, or fails as soon as the rows read
    so far are estimated larger than ``max_result_bytes``; SQLite itself
    refuses to build any one value larger than that (SQLITE_LIMIT_LENGTH).
    A single row of several such values can still pass the cap before it is
    refused: SQLite has no limit on a result row as a whole.
    """
    max_rows, max_bytes = limits
    if conn.length_limit != (max_bytes or conn.default_length):
        _limit_value_length(conn, max_bytes)
    try:
        cursor = conn.execute(query, args)
        try:
            if cursor.description is None:
                return [], cursor.rowcount, False, cursor.lastrowid
            keys = [column[0] for column in cursor.description]
            if max_bytes is not None:
                raw_rows = _fetch_within(cursor, max_rows, max_bytes)
            elif max_rows is not None:
                raw_rows = cursor.fetchmany(max_rows + 1)
            else:
                raw_rows = cursor.fetchall()
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
            return rows, cursor.rowcount, truncated, None
        finally:
            cursor.close()
    except sqlite3.DataError as exc:
        if max_bytes is not None and _TOO_BIG in str(exc):
            raise ResultTooLargeError(max_bytes, "SQLite refuses any one value above it") from exc
        raise


def _fetch_within(cursor: sqlite3.Cursor, max_rows: int | None, max_bytes: int) -> list[Any]:
    """Up to ``max_rows + 1`` rows, refused once they take more than ``max_bytes``.

    Row by row, so the rows read never exceed the cap by more than one row.
    Each row counts what it takes in Python, cheaply: ``sys.getsizeof`` of
    each value (a string or BLOB's length plus a small header; a number's
    fixed size) and :data:`_ROW_BYTES` for the row; nothing is serialised.
    """
    # The first two rows by hand: a point query's one row costs two calls.
    row = cursor.fetchone()
    if row is None:
        return []
    size = _ROW_BYTES + sum(map(getsizeof, row))
    if size > max_bytes:
        raise ResultTooLargeError(max_bytes)
    row2 = cursor.fetchone()
    if row2 is None:
        return [row]
    rows = [row]
    wanted = sys.maxsize if max_rows is None else max_rows + 1
    for row in itertools.chain((row2,), cursor):
        size += _ROW_BYTES + sum(map(getsizeof, row))
        if size > max_bytes:
            raise ResultTooLargeError(max_bytes)
        rows.append(row)
        if len(rows) >= wanted:
            break
    return rows


def _limit_value_length(conn: _Connection, max_bytes: int | None) -> None:
    """SQLite refuses any string or BLOB longer than ``max_bytes`` from now on."""
    limit = min(max_bytes, conn.default_length) if max_bytes else conn.default_length
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit)
    conn.length_limit = max_bytes or conn.default_length


def _group_read(
    conn: _Connection,
    query: str,
    args: _Args,
    limits: _Limits,
    guard: Access | None = None,
) -> _Outcome:
    """A read that may share a read transaction with its queued neighbours.

    Each statement outside a transaction takes and drops SQLite's WAL read
    lock and file lock (system calls); queued reads that run back to back
    share one transaction instead (measured: 4.3 -> 1.8 us per point read).
    They see one snapshot, taken when the batch starts, which is after each
    of them was queued: a caller still reads every write it saw committed.
    A guarded read without neighbours opens and rolls back its own.
    """
    if guard is None:
        return _run_statement(conn, query, args, limits)
    if conn.in_transaction:
        return _run_authorized(conn, query, args, limits, guard)
    conn.execute("BEGIN")
    try:
        return _run_authorized(conn, query, args, limits, guard)
    finally:
        _end_reads(conn)


def _begin_reads(conn: _Connection) -> bool:
    try:
        conn.execute("BEGIN")
    except sqlite3.Error:
        return False  # the reads run one by one instead
    return True


def _end_reads(conn: _Connection) -> bool:
    with contextlib.suppress(sqlite3.Error):
        _rollback(conn)  # a read transaction has nothing to commit
    return False


def _group_write(
    conn: _Connection,
    query: str,
    args: _Args,
    limits: _Limits,
    guard: Access | None,
) -> _Outcome:
    """A write that may share a commit with its queued neighbours (see _run_group).

    Alone, a trusted write commits by itself (autocommit); a guarded one runs
    in a transaction it opens and commits.
    """
    if guard is None:
        return _run_statement(conn, query, args, limits)
    if conn.in_transaction:
        return _run_authorized(conn, query, args, limits, guard)
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcome = _run_authorized(conn, query, args, limits, guard)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            _rollback(conn)
        raise
    return outcome


def _run_group(conn: _Connection, jobs: list[_Job]) -> list[_Completion]:
    """Run queued writes in one transaction; each fails or succeeds alone.

    Optimistic: the group first runs without per-statement savepoints
    (they cost as much as the statement). If any statement fails, that
    whole transaction is rolled back and the group runs again with a
    savepoint around each statement, so a failing statement (even an
    ``OR FAIL`` one that keeps part of its work) leaves no trace. A
    statement whose failure ends the transaction itself (an interrupted
    write: SQLite rolls back the whole transaction) fails alone and the
    group runs again without it.
    """
    live = [job for job in jobs if not job[2].cancelled()]
    if len(live) <= 1:
        return [_attempt_timed(conn, fn, args, future) for fn, args, future in live]
    dropped: list[_Completion] = []
    while live:
        try:
            conn.execute("BEGIN IMMEDIATE")
            done = _run_without_savepoints(conn, live)
            if done is None:
                _rollback(conn)
                conn.execute("BEGIN IMMEDIATE")
                done = _run_with_savepoints(conn, live)
            conn.execute("COMMIT")
        except _TransactionLost as lost:
            dropped.append((lost.future, lost.error, False))
            live = [job for job in live if job[2] is not lost.future]
            continue
        except Exception as exc:  # BEGIN, COMMIT or a savepoint failed: so did the group
            with contextlib.suppress(sqlite3.Error):
                _rollback(conn)
            return dropped + [(future, exc, False) for _, _, future in live]
        return dropped + done
    return dropped


def _run_write(
    conn: _Connection, query: str, args: _Args, limits: _Limits, guard: Access | None
) -> _Outcome:
    if guard is None:
        return _run_statement(conn, query, args, limits)
    return _run_authorized(conn, query, args, limits, guard)


def _run_without_savepoints(conn: _Connection, jobs: list[_Job]) -> list[_Completion] | None:
    """The group's statements, or None as soon as one fails."""
    done: list[_Completion] = []
    clock = conn.clock
    for _, job, future in jobs:
        clock.start(future)
        try:
            outcome = _run_write(conn, *job)
        except Exception as exc:
            if not conn.in_transaction:
                raise _TransactionLost(future, exc) from exc
            return None
        done.append((future, outcome, True))
    return done


def _run_with_savepoints(conn: _Connection, jobs: list[_Job]) -> list[_Completion]:
    done: list[_Completion] = []
    clock = conn.clock
    for _, job, future in jobs:
        conn.execute("SAVEPOINT iogate_write")
        clock.start(future)
        try:
            done.append((future, _run_write(conn, *job), True))
        except Exception as exc:
            if not conn.in_transaction:
                raise _TransactionLost(future, exc) from exc
            conn.execute("ROLLBACK TO iogate_write")
            done.append((future, exc, False))
        conn.execute("RELEASE iogate_write")
    return done


def _rollback(conn: _Connection) -> None:
    # Some errors (disk full, I/O) end the transaction themselves.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _attempt(
    conn: _Connection, fn: Callable[..., Any], args: tuple[Any, ...], future: Any
) -> _Completion:
    try:
        return (future, fn(conn, *args), True)
    except Exception as exc:
        return (future, exc, False)


def _attempt_timed(
    conn: _Connection, fn: Callable[..., Any], args: tuple[Any, ...], future: Any
) -> _Completion:
    conn.clock.start(future)
    return _attempt(conn, fn, args, future)


def _run_read_only(conn: _Connection, query: str, args: _Args, limits: _Limits) -> _Outcome:
    conn.execute("PRAGMA query_only = ON")
    try:
        return _run_statement(conn, query, args, limits)
    finally:
        conn.execute("PRAGMA query_only = OFF")


def _exec_plain(conn: _Connection, statement: str) -> None:
    conn.execute(statement)


def _begin(conn: _Connection, read_only: bool) -> None:
    # A read-only transaction runs with query_only on: SQLite itself refuses
    # writes, and reads see one consistent snapshot.
    if read_only:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")
    else:
        conn.execute("BEGIN IMMEDIATE")


def _end_session(conn: _Connection, read_only: bool) -> None:
    """Leave the writer as a session found it: no transaction, writable."""
    try:
        _rollback(conn)
    finally:
        if read_only:
            conn.execute("PRAGMA query_only = OFF")


def _run_authorized(
    conn: _Connection,
    query: str,
    args: _Args,
    limits: _Limits,
    access: Access,
) -> _Outcome:
    """A client's statement, allowed only if SQLite's authorizer finds every
    action in it within ``access`` (guard_sqlite); inside the caller's
    transaction. A refusal raises ForbiddenStatementError: the statement did
    not compile, or did nothing, and the caller's transaction is rolled back."""
    guard = connection_guard(conn)
    text = guarded_text(query, access)
    guard.enter(access)
    try:
        outcome = _run_statement(conn, text, args, limits)
        guard.ran(conn, text)
    except sqlite3.Error as exc:
        refusal = guard.refusal(conn, text, exc)
        if refusal is None:
            raise
        raise refusal from exc
    finally:
        guard.leave()
    return outcome


def _run_guarded_alone(
    conn: _Connection,
    query: str,
    args: _Args,
    limits: _Limits,
    access: Access,
    read_only: bool,
) -> _Outcome:
    """A guarded statement in a transaction of its own on the writer (no readers)."""
    try:
        _begin(conn, read_only)
        outcome = _run_authorized(conn, query, args, limits, access)
        if not read_only:
            conn.execute("COMMIT")
    finally:
        _end_session(conn, read_only)
    return outcome


def _close_connection(conn: _Connection) -> None:
    conn.close()


def _open_connection(
    path: str,
    *,
    busy_ms: int,
    synchronous: str,
    reader: bool,
    wal: bool,
    statement_timeout: float | None,
) -> _Connection:
    """Open and set up one connection (runs in the connection's thread)."""
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            uri=path.startswith("file:"),
            cached_statements=_CACHED_STATEMENTS,
            factory=_Connection,
        )
    except sqlite3.Error as exc:
        raise DatabaseConnectionError(f"cannot open {path!r}: {exc}") from exc
    conn.clock = _JobClock(statement_timeout)
    conn.set_progress_handler(conn.clock.check, _PROGRESS_STEPS)
    conn.default_length = conn.length_limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    try:
        conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        if reader:
            conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        conn.close()
        raise DatabaseConnectionError(f"cannot set up {path!r}: {exc}") from exc
    if wal:
        # Another process switching a new file to WAL at this very moment makes
        # SQLite answer "database is locked" at once (waiting could deadlock, so
        # busy_timeout does not apply): try again until busy_timeout has passed.
        give_up = time.monotonic() + busy_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchall()
                break
            except sqlite3.Error as exc:
                if "locked" in str(exc) and time.monotonic() < give_up:
                    time.sleep(_WAL_RETRY_PAUSE)  # this connection's own thread
                    continue
                conn.close()
                raise DatabaseConnectionError(f"cannot enable WAL on {path!r}: {exc}") from exc
    return conn


def _map_error(exc: Exception) -> IogateError:
    message = str(exc)
    if isinstance(exc, _BINDING_ERRORS):
        return ParameterError(f"a parameter cannot be bound: {message}")
    if isinstance(exc, sqlite3.OperationalError) and message == _INTERRUPTED:
        return OperationTimeoutError(
            "statement stopped at its deadline (statement_timeout or the request's)"
        )
    if _READONLY_MESSAGE in message or "query_only" in message:
        return ReadOnlyError(f"the database refused a write in read-only mode: {message}")
    if "Incorrect number of bindings" in message:
        return QueryError(message)
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in message:
        return DatabaseConnectionError(message)
    return QueryError(message)


# -- the connection thread ---------------------------------------------------


class _Worker:
    """One sqlite3 connection and the one thread that ever touches it.

    The loop side (``submit``, ``stop``) and the thread side (``_serve``)
    share two queues: jobs in, completions out. Completions are handed to
    the loop in batches; ``_delivery_scheduled`` makes sure at most one
    delivery callback is pending, however many batches finish meanwhile.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._completions: deque[_Completion] = deque()
        self._delivery_scheduled = False
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        # perf_counter() when the running job started; 0.0 when idle. Written
        # by the thread, read by the loop (a float store is atomic).
        self.job_started = 0.0

    def __repr__(self) -> str:
        state = "stopping" if self._stopped else "running" if self._thread else "new"
        return f"<_Worker {self.name} {state} queued={self._jobs.qsize()}>"

    # -- event loop side --

    async def start(self, connect: Callable[[], _Connection]) -> None:
        """Start the thread, which opens the connection; raise what opening raised."""
        ready: asyncio.Future[None] = self._loop.create_future()
        thread = threading.Thread(
            target=self._serve, args=(connect, ready), name=self.name, daemon=True
        )
        thread.start()
        self._thread = thread  # only a started thread is ever stopped and joined
        await ready

    def new_future(self) -> asyncio.Future[Any]:
        return self._loop.create_future()

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        """Queue ``fn(conn, *args)``; its future resolves when it has run."""
        if self._stopped is not None:
            raise ClosedError(f"{self.name}: connection closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, args, future))
        return future

    def enqueue(self, job: _Job) -> None:
        """Queue a job made earlier (a write that waited out a session)."""
        if self._stopped is not None:
            raise ClosedError(f"{self.name}: connection closed")
        self._jobs.put(job)

    def abandon(self) -> None:
        """Let the thread close the connection and end, waiting for nothing.

        For a manager collected without close() (which warns): its threads
        and connections must not outlive it. Safe from any thread.
        """
        if self._thread is not None and self._stopped is None:
            # Nobody awaits this future; the thread still resolves it (or
            # finds the loop closed), which is harmless either way.
            self._jobs.put((_close_connection, (), self._loop.create_future()))

    async def stop(self) -> None:
        """Close the connection after every job queued so far; join the thread."""
        thread = self._thread
        if thread is None:
            return
        if self._stopped is None:
            self._stopped = self._loop.create_future()
            self._jobs.put((_close_connection, (), self._stopped))
        with contextlib.suppress(Exception):
            await asyncio.shield(self._stopped)
        # The thread returns right after handing back the close's outcome.
        thread.join()
        self._thread = None

    def _deliver(self) -> None:
        self._delivery_scheduled = False
        completions = self._completions
        while completions:
            future, value, succeeded = completions.popleft()
            if future.done():  # its caller gave up
                continue
            if succeeded:
                future.set_result(value)
            else:
                future.set_exception(value)

    # -- connection thread side --

    def _post(self, completions: list[_Completion]) -> None:
        # The loop clears the flag before draining, so a batch appended after
        # its last pop always finds the flag clear and schedules a delivery.
        self._completions.extend(completions)
        if not self._delivery_scheduled:
            self._delivery_scheduled = True
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits
                self._loop.call_soon_threadsafe(self._deliver)

    def _serve(self, connect: Callable[[], _Connection], ready: asyncio.Future[None]) -> None:
        try:
            conn: _Connection | None = connect()
        except Exception as exc:
            conn = None
            self._post([(ready, exc, False)])
        else:
            self._post([(ready, None, True)])
        del connect
        jobs = self._jobs
        while True:
            batch = [jobs.get()]
            for _ in range(min(jobs.qsize(), _MAX_BATCH - 1)):
                batch.append(jobs.get_nowait())
            if conn is None:
                if not self._refuse(batch):
                    return
            elif not self._run_batch(conn, batch):
                return

    def _run_batch(self, conn: _Connection, batch: list[_Job]) -> bool:
        """Run a drained batch in order; False once the connection is closed."""
        done: list[_Completion] = []
        now = self.job_started = time.perf_counter()
        flush_at = now + _FLUSH_AFTER
        index, size = 0, len(batch)
        reading = False  # inside a read transaction (see _group_read)
        clock = conn.clock  # each job's deadline, for SQLite's progress handler
        timeout = clock.timeout
        while index < size:
            fn, args, future = batch[index]
            if fn is _group_write:
                end = index + 1
                while end < size and batch[end][0] is _group_write:
                    end += 1
                done += _run_group(conn, batch[index:end])
                index = end
            elif fn is _close_connection:
                self._post(done)
                self._post([_attempt(conn, fn, args, future)])
                return False
            else:
                if not future.cancelled():
                    if (
                        fn is _group_read
                        and not reading
                        and index + 1 < size
                        and batch[index + 1][0] is _group_read
                    ):
                        reading = _begin_reads(conn)
                    clock.running = future
                    clock.expires_at = now + timeout
                    done.append(_attempt(conn, fn, args, future))
                index += 1
                if reading and (index == size or batch[index][0] is not _group_read):
                    reading = _end_reads(conn)
            now = self.job_started = time.perf_counter()
            if done and now >= flush_at:
                self._post(done)
                done = []
                flush_at = now + _FLUSH_AFTER
        self.job_started = 0.0
        clock.running = None
        clock.expires_at = math.inf
        if done:
            self._post(done)
        return True

    def _refuse(self, batch: list[_Job]) -> bool:
        """The connection never opened: fail every job; False at the close job."""
        for fn, _, future in batch:
            if fn is _close_connection:
                self._post([(future, None, True)])
                return False
            self._post([(future, ClosedError(f"{self.name}: connection failed to open"), False)])
        return True


# -- waiting for a job (event loop) ------------------------------------------

_STATEMENT_LATE = "statement did not finish within the deadline ({:.3g}s)"
_WRITE_LATE = "write not finished within the deadline ({:.3g}s); it may still be committed"


def _bounded(future: asyncio.Future[T], deadline: Deadline, late: str) -> Awaitable[T]:
    """``future`` bounded by ``deadline``; the future itself when there is none.

    At the deadline the job's future is cancelled: a job still queued is
    skipped; one already running is interrupted in its thread (see
    :class:`_JobClock`) and its outcome dropped. Either way the next job on
    that connection queues behind it, so nobody shares the connection
    mid-statement. Without a deadline no coroutine is added on the way
    (this is every operation's path).
    """
    timeout = deadline.remaining()
    if timeout is None:
        return future
    return _within(future, timeout, late)


async def _within(future: asyncio.Future[T], timeout: float, late: str) -> T:
    try:
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError:
        raise OperationTimeoutError(late.format(timeout)) from None


def _abandon_workers(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.abandon()


# -- the manager ----------------------------------------------------------------


class AsyncSQLiteManager(AsyncDatabaseManager):
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
        super().__init__(name=name)
        options = (
            options or DatabaseOptions(max_connections=DEFAULT_SQLITE_CONNECTIONS)
        ).with_max_connections(max_connections)
        self.options = options
        self._limits: _Limits = (options.max_rows, options.max_result_bytes)
        self.path = path
        self._in_memory = path == ":memory:" or "mode=memory" in path
        self._reader_count = 0 if self._in_memory else max(1, options.max_connections - 1)
        self._writer: _Worker | None = None
        self._readers: list[_Worker] = []
        # Statements queued or running per reader: reads go to the
        # least-loaded reader and queue in its thread back to back.
        self._reader_load: list[int] = []
        self._writes_pending = 0
        # A session (transaction or solo statement) has the writer to itself:
        # writes arriving meanwhile wait here, not in the writer's queue, so
        # they never run inside the session's transaction.
        self._writer_lock = asyncio.Lock()
        self._session_active = False
        self._deferred: list[_Job] = []
        self._closing = False
        self._abandon: weakref.finalize[Any, Any] | None = None

    def __repr__(self) -> str:
        s = self.pool_stats()
        return (
            f"<AsyncSQLiteManager {self.name!r} {self.path!r} readers={len(self._readers)} "
            f"idle_readers={s['idle']} write_queue={self._writes_pending}>"
        )

    def pool_stats(self) -> PoolStats:
        busy = sum(1 for load in self._reader_load if load)
        writer_busy = self._writer_lock.locked() or self._writes_pending > 0
        return {
            "size": len(self._readers) + (1 if self._writer else 0),
            "max_size": self._reader_count + 1,
            "in_use": busy + (1 if writer_busy else 0),
            "idle": len(self._readers) - busy,
            "waiting": sum(max(0, load - 1) for load in self._reader_load),
        }

    def pool_details(self) -> dict[str, int]:
        return {"readers": len(self._readers), "write_queue": self._writes_pending}

    # -- lifecycle ------------------------------------------------------------

    def _connector(self, *, reader: bool) -> Callable[[], _Connection]:
        # Only plain values go to the thread: it must not keep the manager
        # alive (an unclosed manager has to be collectable to warn).
        return functools.partial(
            _open_connection,
            self.path,
            busy_ms=int(self.options.busy_timeout * 1000),
            synchronous=self.options.synchronous.upper(),
            reader=reader,
            wal=not reader and not self._in_memory,
            statement_timeout=self.options.statement_timeout,
        )

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._closing = False
        try:
            self._writer = _Worker(f"iogate-sqlite-{self.name}-writer", loop)
            await self._writer.start(self._connector(reader=False))
            for number in range(self._reader_count):
                reader = _Worker(f"iogate-sqlite-{self.name}-reader-{number}", loop)
                self._readers.append(reader)
                self._reader_load.append(0)
                await reader.start(self._connector(reader=True))
        except BaseException:
            await self._close()
            raise
        self._abandon = weakref.finalize(self, _abandon_workers, [self._writer, *self._readers])
        self._abandon.atexit = False  # daemon threads end with the process anyway

    async def _close(self) -> None:
        self._closing = True
        if self._abandon is not None:
            self._abandon.detach()
        for _, _, future in self._deferred:
            if not future.done():
                future.set_exception(ClosedError(f"{self.name}: manager closed"))
        self._deferred.clear()
        async with self._writer_lock:
            workers = [*self._readers, *([self._writer] if self._writer else [])]
            self._readers.clear()
            self._reader_load.clear()
            self._writer = None
            for worker in workers:
                await worker.stop()

    def _call(
        self, worker: _Worker, fn: Callable[..., T], args: tuple[Any, ...], deadline: Deadline
    ) -> Awaitable[T]:
        """Queue ``fn`` on ``worker``; await the result to run it within the deadline."""
        return _bounded(worker.submit(fn, args), deadline, _STATEMENT_LATE)

    # -- reads ----------------------------------------------------------------

    async def _read(
        self,
        query: str,
        args: _Args,
        deadline: Deadline,
        limits: _Limits,
        run: Callable[..., _Outcome] = _run_statement,
        guard: Access | None = None,
    ) -> _Outcome:
        loads = self._reader_load
        index = self._pick_reader()
        loads[index] += 1
        job = (query, args, limits) if guard is None else (query, args, limits, guard)
        try:
            future = self._readers[index].submit(run, job)
            return await _bounded(future, deadline, _STATEMENT_LATE)
        finally:
            if index < len(loads):  # the manager may have closed meanwhile
                loads[index] -= 1

    def _pick_reader(self) -> int:
        """The first reader not stuck on a long statement, else the least loaded.

        Reads pile onto one reader rather than spreading: a point read holds
        the GIL for most of its few microseconds, so spreading them only adds
        GIL hand-offs between threads (measured: 40 % more CPU per read at
        concurrency 50). A reader that has spent more than ``_STALLED_AFTER``
        on one statement (which runs without the GIL) is passed over, so a
        slow query does not hold up the reads behind it.
        """
        now = time.perf_counter()
        for index, reader in enumerate(self._readers):
            started = reader.job_started
            if not started or now - started < _STALLED_AFTER:
                return index
        loads = self._reader_load
        return loads.index(min(loads))

    # -- writes ---------------------------------------------------------------

    async def _write(
        self,
        query: str,
        args: _Args,
        deadline: Deadline,
        limits: _Limits,
        guard: Access | None = None,
    ) -> _Outcome:
        writer = self._writer
        if self._closing or writer is None:
            raise ClosedError(f"{self.name}: manager closed")
        job = (query, args, limits, guard)
        if self._session_active:
            future: asyncio.Future[_Outcome] = writer.new_future()
            self._deferred.append((_group_write, job, future))
        else:
            future = writer.submit(_group_write, job)
        self._writes_pending += 1
        try:
            return await _bounded(future, deadline, _WRITE_LATE)
        finally:
            self._writes_pending -= 1

    def _release_deferred(self) -> None:
        """Hand the writes that waited out a session to the writer, in order."""
        deferred, self._deferred = self._deferred, []
        writer = self._writer
        for job in deferred:
            if job[2].done():
                continue
            if writer is None:
                job[2].set_exception(ClosedError(f"{self.name}: manager closed"))
            else:
                writer.enqueue(job)

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
        verb, args = _bind(query, normalize_params(params))
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
        if verb in _TX_CONTROL:
            raise InvalidRequestError(
                f"{verb} is not accepted by execute_query: use manager.transaction()"
            )
        read_only = read_only or self.options.read_only
        try:
            if verb in _READ_VERBS and self._readers:
                try:
                    outcome = await self._read(query, args, deadline, limits, _group_read)
                except sqlite3.OperationalError as exc:
                    if read_only or _READONLY_MESSAGE not in str(exc):
                        raise  # a misrouted write is retried on the writer
                    outcome = await self._write(query, args, deadline, limits)
            elif read_only and self._readers:
                # Any other statement runs alone: some (ATTACH, VACUUM, some
                # PRAGMAs) refuse to run inside a transaction or ignore it.
                outcome = await self._read(query, args, deadline, limits)
            elif verb in _SOLO_VERBS or self._in_memory:
                outcome = await self._solo(query, args, deadline, limits, read_only)
            else:
                outcome = await self._write(query, args, deadline, limits)
        except (sqlite3.Error, *_BINDING_ERRORS) as exc:
            raise _map_error(exc) from exc
        rows, rowcount, truncated, rowid = outcome
        rows_affected = rowcount if rowcount >= 0 and verb not in _READ_VERBS else None
        return Result.ok(
            rows,
            operation="query",
            rows_affected=rows_affected,
            truncated=truncated,
            last_insert_id=rowid if verb in _INSERT_VERBS and rowcount == 1 else None,
        )

    async def _execute_guarded(
        self,
        query: str,
        args: _Args,
        deadline: Deadline,
        read_only: bool,
        limits: _Limits,
        access: Access,
    ) -> Result:
        """A client's statement: placed by its access, judged by SQLite's authorizer."""
        reading = read_only or access is Access.READ
        try:
            if not self._readers:
                async with self._writer_session(deadline) as writer:
                    job = (query, args, limits, access, reading)
                    outcome = await self._call(writer, _run_guarded_alone, job, deadline)
            elif reading:
                outcome = await self._read(query, args, deadline, limits, _group_read, access)
            else:
                outcome = await self._write(query, args, deadline, limits, access)
        except (sqlite3.Error, *_BINDING_ERRORS) as exc:
            raise _map_error(exc) from exc
        # No last_insert_id: SQLite's is the connection's, so on the shared
        # writer an INSERT that sets none (WITHOUT ROWID, an upsert's update)
        # would show another key's (last_insert_rowid() is refused likewise).
        rows, rowcount, truncated, _ = outcome
        rows_affected = rowcount if rowcount >= 0 else None
        return Result.ok(rows, operation="query", rows_affected=rows_affected, truncated=truncated)

    async def _solo(
        self,
        query: str,
        args: _Args,
        deadline: Deadline,
        limits: _Limits,
        read_only: bool,
    ) -> _Outcome:
        """Run alone on the writer, outside any group transaction."""
        async with self._writer_session(deadline) as writer:
            fn = _run_read_only if read_only else _run_statement
            return await self._call(writer, fn, (query, args, limits), deadline)

    @asynccontextmanager
    async def _writer_session(self, deadline: Deadline) -> AsyncIterator[_Worker]:
        timeout = deadline.cap(self.options.acquire_timeout) or 0.0
        try:
            async with asyncio.timeout(timeout):
                await self._writer_lock.acquire()
        except TimeoutError:
            raise PoolExhaustedError(f"SQLite writer busy for more than {timeout:.3g}s") from None
        try:
            writer = self._writer
            if writer is None or self._closing:
                raise ClosedError(f"{self.name}: manager closed")
            self._session_active = True
            try:
                yield writer
            finally:
                self._session_active = False
                self._release_deferred()
        finally:
            self._writer_lock.release()

    @asynccontextmanager
    async def _transaction_impl(
        self, read_only: bool, deadline: Deadline, guard: Access | None
    ) -> AsyncIterator[Transaction]:
        read_only = read_only or self.options.read_only
        async with self._writer_session(deadline) as writer:
            tx = _SQLiteTransaction(self, writer, deadline, guard)
            committed = False
            try:
                try:
                    await self._call(writer, _begin, (read_only,), deadline)
                except sqlite3.Error as exc:
                    raise _map_error(exc) from exc
                yield tx
                if not tx.failed:
                    try:
                        await writer.submit(_exec_plain, ("COMMIT",))
                    except sqlite3.Error as exc:
                        raise _map_error(exc) from exc
                    committed = True
                    tx.status = "committed"
            finally:
                if not committed:
                    tx.status = "rolled_back"
                # Queued before the writer is handed on, so it runs next in
                # the writer's thread even if this task is being cancelled;
                # shielded so that a cancellation cannot skip it.
                await asyncio.shield(writer.submit(_end_session, (read_only,)))

    def _transaction(
        self, *, read_only: bool, deadline: Deadline, guard: Access | None = None
    ) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction_impl(read_only, deadline, guard)

    async def _ping(self) -> None:
        if self._readers:
            await self._read("SELECT 1", (), Deadline.never(), _UNLIMITED)
        else:
            async with self._writer_session(Deadline.never()) as writer:
                await writer.submit(_run_statement, ("SELECT 1", (), _UNLIMITED))


class _SQLiteTransaction(Transaction):
    def __init__(
        self,
        manager: AsyncSQLiteManager,
        writer: _Worker,
        deadline: Deadline,
        guard: Access | None = None,
    ) -> None:
        super().__init__(guard, manager)
        self._manager = manager
        self._writer = writer
        self._deadline = deadline

    async def _execute(self, query: str, params: Params) -> Result:
        verb, args = _bind(query, normalize_params(params))
        limits = self._manager._limits
        run: Callable[..., _Outcome] = _run_statement
        job: tuple[Any, ...] = (query, args, limits)
        if self.guard is not None:
            # SQLite's authorizer refuses transaction control and the rest.
            run, job = _run_authorized, (query, args, limits, self.guard)
        elif verb in _TX_CONTROL:
            raise InvalidRequestError(f"{verb} inside transaction(): the block manages it")
        try:
            rows, rowcount, truncated, rowid = await self._manager._call(
                self._writer, run, job, self._deadline
            )
        except (sqlite3.Error, *_BINDING_ERRORS) as exc:
            return Result.from_exception(
                _map_error(exc), resource=self._manager.name, operation="query"
            )
        counted = rowcount >= 0 and (self.guard is not None or verb not in _READ_VERBS)
        rows_affected = rowcount if counted else None
        inserted = self.guard is None and verb in _INSERT_VERBS and rowcount == 1
        result = Result.ok(
            rows,
            operation="query",
            rows_affected=rows_affected,
            truncated=truncated,
            last_insert_id=rowid if inserted else None,
        )
        result.resource = self._manager.name
        return result
