"""An asyncmy result as iogate's ``Result``, and what a statement's first word tells."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from iogate.backends.mysql.placeholders import classify_guarded
from iogate.backends.pool import PooledConnection
from iogate.backends.rows import rows_result
from iogate.core.errors import IogateError
from iogate.core.result import Result

__all__ = ["Outcome", "count", "may_write", "note_session_change", "to_result"]

# Statements that may leave session state a later caller would inherit
# (autocommit off, an open transaction, table locks): the connection is reset
# after them. This is hygiene, not a security boundary; read-only is set by
# the server session on every read-only call.
_SESSION_VERBS = frozenset({"SET", "START", "BEGIN", "XA", "LOCK", "CALL", "HANDLER"})
# Statements whose affected-rows count is reported (without a result set, a
# WITH is MySQL 8's WITH ... UPDATE/DELETE), and those whose result set is
# their RETURNING rows.
_COUNTED_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD", "WITH"})
_RETURNING_VERBS = frozenset({"INSERT", "REPLACE", "DELETE"})
_LEADING_WORD = re.compile(
    r"(?:\s+|--[^\n]*(?:\n|$)|#[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class Outcome:
    columns: tuple[str, ...] | None  # None: the statement returned no result set
    rows: list[tuple[Any, ...]]
    rowcount: int
    last_insert_id: int


def may_write(query: str) -> bool:
    """Could ``query`` have written? (Asked only after a connection was lost.)"""
    try:
        verdict = classify_guarded(query)
    except IogateError:
        return True
    return verdict.writes or verdict.refusal is not None


def note_session_change(conn: PooledConnection[Any], query: str) -> None:
    match = _LEADING_WORD.match(query)
    if match and match.group(1).upper() in _SESSION_VERBS:
        conn.needs_reset = True


@functools.lru_cache(maxsize=1024)
def _verb(query: str) -> str:
    """The statement's first word, upper-cased (cached: asked on every call)."""
    match = _LEADING_WORD.match(query)
    return match.group(1).upper() if match else ""


def to_result(outcome: Outcome, max_rows: int | None, query: str) -> Result:
    """The Result shape every SQL backend shares (docs/guide.md, "Result shape").

    The OK packet's affected-rows count is 0 for DDL and SET as for an UPDATE
    that matched nothing, so the statement's first word tells a count from
    none; a result set from ``INSERT/REPLACE/DELETE ... RETURNING`` counts its
    rows, one per row written. ``last_insert_id`` is the OK packet's insert id
    when one row was written (for several, MariaDB gives the first and SQLite
    the last: RETURNING answers both alike).
    """
    verb = _verb(query)
    if outcome.columns is None:
        return Result.ok(
            [],
            operation="query",
            rows_affected=outcome.rowcount if verb in _COUNTED_VERBS else None,
            last_insert_id=(outcome.last_insert_id or None) if outcome.rowcount == 1 else None,
        )
    rows = outcome.rows
    written = len(rows) if verb in _RETURNING_VERBS else None
    return rows_result(outcome.columns, rows, max_rows, written)


def count(rowcount: object) -> int:
    # asyncmy reports -1 or None when there is no count.
    return rowcount if isinstance(rowcount, int) and rowcount > 0 else 0
