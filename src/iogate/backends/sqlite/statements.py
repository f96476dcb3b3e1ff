"""Running one statement on a connection (in the connection's thread).

Everything here runs in a worker thread, on the connection that thread
owns. :func:`run_statement` executes and reads in one go, within the
result caps: reading stops at ``max_rows + 1`` rows; with
``max_result_bytes`` rows are read one by one and the result refused once
their estimated size passes it, and SQLite refuses to build any one value
larger than it (SQLITE_LIMIT_LENGTH), so a 150 MB value never exists.

Around it: a guarded statement (:func:`run_authorized`, judged by SQLite's
authorizer, see :mod:`.guard`), a read-only one on the writer, the BEGIN
and end of a writer session, and :func:`run_many`, a group of statements in
one transaction of their own.
"""

from __future__ import annotations

import base64
import itertools
import sqlite3
import sys
import time
from sys import getsizeof
from typing import Any

from iogate.core.errors import ResultTooLargeError
from iogate.core.sqlguard import Access

from .connection import UNLIMITED, Args, Connection, Limits, Outcome
from .guard import connection_guard, guarded_text

__all__ = [
    "begin",
    "end_session",
    "exec_plain",
    "rollback",
    "run_authorized",
    "run_guarded_alone",
    "run_many",
    "run_read_only",
    "run_statement",
]

_TOO_BIG = "too big"  # SQLITE_TOOBIG: a value over SQLITE_LIMIT_LENGTH
# What a row counts against max_result_bytes besides its values: the tuple
# it is read as, then the dict it is answered as.
_ROW_BYTES = 256


def _convert(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def run_statement(conn: Connection, query: str, args: Args, limits: Limits = UNLIMITED) -> Outcome:
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


def _limit_value_length(conn: Connection, max_bytes: int | None) -> None:
    """SQLite refuses any string or BLOB longer than ``max_bytes`` from now on."""
    limit = min(max_bytes, conn.default_length) if max_bytes else conn.default_length
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit)
    conn.length_limit = max_bytes or conn.default_length


def rollback(conn: Connection) -> None:
    # Some errors (disk full, I/O) end the transaction themselves.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def run_read_only(conn: Connection, query: str, args: Args, limits: Limits) -> Outcome:
    conn.execute("PRAGMA query_only = ON")
    try:
        return run_statement(conn, query, args, limits)
    finally:
        conn.execute("PRAGMA query_only = OFF")


def exec_plain(conn: Connection, statement: str) -> None:
    conn.execute(statement)


def begin(conn: Connection, read_only: bool) -> None:
    # A read-only transaction runs with query_only on: SQLite itself refuses
    # writes, and reads see one consistent snapshot.
    if read_only:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")
    else:
        conn.execute("BEGIN IMMEDIATE")


def end_session(conn: Connection, read_only: bool) -> None:
    """Leave the writer as a session found it: no transaction, writable."""
    try:
        rollback(conn)
    finally:
        if read_only:
            conn.execute("PRAGMA query_only = OFF")


def run_authorized(
    conn: Connection,
    query: str,
    args: Args,
    limits: Limits,
    access: Access,
) -> Outcome:
    """A client's statement, allowed only if SQLite's authorizer finds every
    action in it within ``access`` (:mod:`.guard`); inside the caller's
    transaction. A refusal raises ForbiddenStatementError: the statement did
    not compile, or did nothing, and the caller's transaction is rolled back."""
    guard = connection_guard(conn)
    text = guarded_text(query, access)
    guard.enter(access)
    try:
        outcome = run_statement(conn, text, args, limits)
        guard.ran(conn, text)
    except sqlite3.Error as exc:
        refusal = guard.refusal(conn, text, exc)
        if refusal is None:
            raise
        raise refusal from exc
    finally:
        guard.leave()
    return outcome


def run_guarded_alone(
    conn: Connection,
    query: str,
    args: Args,
    limits: Limits,
    access: Access,
    read_only: bool,
) -> Outcome:
    """A guarded statement in a transaction of its own on the writer (no readers)."""
    try:
        begin(conn, read_only)
        outcome = run_authorized(conn, query, args, limits, access)
        if not read_only:
            conn.execute("COMMIT")
    finally:
        end_session(conn, read_only)
    return outcome


def run_many(
    conn: Connection,
    query: str,
    args_list: list[Args],
    limits: Limits,
    access: Access | None,
    read_only: bool,
) -> list[Outcome]:
    """``query`` once per argument set, in one transaction: all or nothing.

    Each statement gets its own ``statement_timeout``. The first failure
    ends the lot: the transaction is rolled back and the error raised, so
    nothing of the group is left written.
    """
    clock = conn.clock
    outcomes: list[Outcome] = []
    try:
        begin(conn, read_only)
        for args in args_list:
            clock.expires_at = time.perf_counter() + clock.timeout
            if access is None:
                outcomes.append(run_statement(conn, query, args, limits))
            else:
                outcomes.append(run_authorized(conn, query, args, limits, access))
        if not read_only:
            conn.execute("COMMIT")
    finally:
        end_session(conn, read_only)
    return outcomes
