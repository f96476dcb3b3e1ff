"""What iogate reads from SQLite statements and errors (event loop side).

A statement is placed by its first keyword (:data:`READ_VERBS` go to a
reader, :data:`SOLO_VERBS` run alone on the writer, :data:`TX_CONTROL` is
refused outside ``manager.transaction()``), and its arguments are bound as
its placeholders ask (:func:`bind`). SQLite's exceptions become iogate
errors in one place, :func:`map_error`.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from typing import Any

from iogate.core.errors import (
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
    ParameterError,
    QueryError,
    ReadOnlyError,
)
from iogate.core.params import count_placeholders
from iogate.core.result import Result

from .connection import Args, Outcome

__all__ = [
    "BINDING_ERRORS",
    "INSERT_VERBS",
    "READONLY_MESSAGE",
    "READ_VERBS",
    "SOLO_VERBS",
    "TX_CONTROL",
    "bind",
    "map_error",
    "to_result",
]

READ_VERBS = frozenset({"SELECT", "VALUES", "EXPLAIN", "WITH"})
# Statements whose rowid (cursor.lastrowid) is reported as last_insert_id
# when they wrote one row (docs/guide.md, "Result shape").
INSERT_VERBS = frozenset({"INSERT", "REPLACE"})
# Statements that manage transactions themselves or cannot run inside one.
SOLO_VERBS = frozenset({"VACUUM", "PRAGMA", "ATTACH", "DETACH", "REINDEX", "ANALYZE"})
TX_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})
_LEADING = re.compile(r"\s*(?:(?:--[^\n]*\n)|(?:/\*.*?\*/)|\s)*\s*([A-Za-z]+)", re.DOTALL)
# Queries up to this length have their keyword and placeholder count cached.
_ANALYSIS_CACHE_CHARS = 4096
READONLY_MESSAGE = "attempt to write a readonly database"
# Raised by sqlite3 while binding a parameter, outside its own exception tree.
BINDING_ERRORS = (OverflowError, UnicodeEncodeError)
_INTERRUPTED = "interrupted"  # a statement stopped by the progress handler


# -- statements -----------------------------------------------------------------


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


def bind(query: str, args: tuple[Any, ...]) -> tuple[str, Args]:
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


# -- errors ---------------------------------------------------------------------


def map_error(exc: Exception) -> IogateError:
    message = str(exc)
    if isinstance(exc, BINDING_ERRORS):
        return ParameterError(f"a parameter cannot be bound: {message}")
    if isinstance(exc, sqlite3.OperationalError) and message == _INTERRUPTED:
        return OperationTimeoutError(
            "statement stopped at its deadline (statement_timeout or the request's)"
        )
    if READONLY_MESSAGE in message or "query_only" in message:
        return ReadOnlyError(f"the database refused a write in read-only mode: {message}")
    if "Incorrect number of bindings" in message:
        return QueryError(message)
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in message:
        return DatabaseConnectionError(message)
    return QueryError(message)


# -- results --------------------------------------------------------------------


def to_result(outcome: Outcome, verb: str | None) -> Result:
    """The Result of one statement from what its thread read.

    ``verb`` is the statement's first keyword, or None for a guarded
    statement, which is never judged by its text. ``rows_affected`` is
    reported unless the statement is a trusted read (whose rowcount means
    nothing). ``last_insert_id`` only for a trusted INSERT or REPLACE that
    wrote one row: SQLite's is the connection's, so on the shared writer a
    guarded INSERT that sets none (WITHOUT ROWID, an upsert's update) would
    show another key's (``last_insert_rowid()`` is refused likewise).
    ``AsyncSQLiteManager._execute`` builds the same inline (its hot path).
    """
    rows, rowcount, truncated, rowid = outcome
    counted = rowcount >= 0 and verb not in READ_VERBS
    inserted = verb in INSERT_VERBS and rowcount == 1
    return Result.ok(
        rows,
        operation="query",
        rows_affected=rowcount if counted else None,
        truncated=truncated,
        last_insert_id=rowid if inserted else None,
    )
