"""One SQLite connection as its worker thread holds it, and what jobs carry.

Each connection is opened in, and only ever touched by, its own worker
thread (:mod:`.worker`). :func:`open_connection` sets it up there: WAL on
the writer, ``query_only`` on readers, a statement cache, and a
:class:`JobClock` as SQLite's progress handler, so that a statement whose
caller has given up, or that has run ``statement_timeout``, is interrupted
by SQLite itself.

The type aliases at the end are the shapes passed between the event loop
and the threads: a statement's caps and arguments going in, its outcome
coming back, and the jobs and completions the worker queues carry.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from iogate.core.errors import DatabaseConnectionError

from .guard import GuardableConnection

__all__ = [
    "UNLIMITED",
    "Args",
    "Completion",
    "Connection",
    "Job",
    "JobClock",
    "Limits",
    "Outcome",
    "close_connection",
    "open_connection",
]

# sqlite3's per-connection cache of prepared statements.
_CACHED_STATEMENTS = 256
# SQLite calls the progress handler every this many virtual machine steps
# (some 20-50 ms of work): how late a statement may stop after its deadline.
# Each call takes the GIL from the event loop, and SQLite counts the steps of
# a cached statement across its runs, so a point query (20-30 steps) calls it
# once in tens of thousands of runs; at 10,000 steps it cost point reads 7 %.
_PROGRESS_STEPS = 1_000_000
_WAL_RETRY_PAUSE = 0.02  # seconds between tries to switch a new file to WAL

# A statement's result caps, (max_rows, max_result_bytes); None is no cap. A
# plain tuple: one is built per call, and a NamedTuple costs ten times more.
Limits = tuple[int | None, int | None]
UNLIMITED: Limits = (None, None)
# Statement arguments as the driver binds them: by position (``?``), or by
# name for ``$n`` placeholders (see ``dialect.bind``).
Args = tuple[Any, ...] | dict[str, Any]
# (rows, rowcount, truncated, lastrowid) computed in the connection's thread;
# lastrowid only for a statement that returned no rows.
Outcome = tuple[list[dict[str, Any]], int, bool, int | None]
# (function run as fn(conn, *args), args, the caller's future)
Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]
# (future, result or exception, succeeded)
Completion = tuple[asyncio.Future[Any], Any, bool]


class JobClock:
    """When the running job's statement must stop; asked by SQLite itself.

    Installed as the connection's progress handler, so SQLite calls
    :meth:`check` every :data:`_PROGRESS_STEPS` steps of a long statement
    and interrupts it when the answer is nonzero: once its caller has given
    up (the job's future is cancelled, as it is at the request's deadline)
    or once it has run ``statement_timeout`` seconds. The thread is then
    free for the next job; an interrupted write rolls back its whole
    transaction (see :func:`run_group`). Written and read in the
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


class Connection(GuardableConnection):
    """A worker's sqlite3 connection and its per-connection state."""

    clock: JobClock
    # SQLITE_LIMIT_LENGTH as the connection was opened, and as last set.
    default_length: int
    length_limit: int


def close_connection(conn: Connection) -> None:
    conn.close()


def open_connection(
    path: str,
    *,
    busy_ms: int,
    synchronous: str,
    reader: bool,
    wal: bool,
    statement_timeout: float | None,
) -> Connection:
    """Open and set up one connection (runs in the connection's thread)."""
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            uri=path.startswith("file:"),
            cached_statements=_CACHED_STATEMENTS,
            factory=Connection,
        )
    except sqlite3.Error as exc:
        raise DatabaseConnectionError(f"cannot open {path!r}: {exc}") from exc
    conn.clock = JobClock(statement_timeout)
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
