"""Running one statement on an asyncpg connection: prepared, cached, bounded.

Statements run as prepared statements cached per connection (one round
trip per query, the command status available for ``rows_affected``); for
trusted code only, a multi-statement string without parameters falls back
to the simple protocol. ``max_rows`` is sent with the statement as the
extended protocol's row count and ``max_result_bytes`` is metered on the
socket (:mod:`.meter`).
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from iogate.backends.meter import NO_BYTE_CAP
from iogate.backends.pool import PooledConnection
from iogate.backends.postgres.guard import classify_postgres
from iogate.backends.postgres.meter import ResultMeter
from iogate.core.coerce import CoercionError, coerce_postgres_args
from iogate.core.errors import QueryError, ResultTooLargeError

__all__ = ["fetch", "is_single_row_insert", "may_write"]

STATEMENT_CACHE_SIZE = 256
_INSERT_VALUES = re.compile(r"^\s*INSERT\s+INTO\s+[^;]*?\bVALUES\s*\(", re.IGNORECASE | re.DOTALL)


def is_single_row_insert(query: str) -> bool:
    """``INSERT INTO t (...) VALUES (...)``: exactly one row, nothing after it.

    Only such a statement is known to affect exactly one row, which is what
    lets a pipelined ``executemany`` (which returns no command status) still
    report ``rows_affected`` per statement. ON CONFLICT, RETURNING, a second
    VALUES tuple or a SELECT source all fail this test. A BEFORE trigger that
    skips the row would not be seen; such tables should not be batched.
    """
    match = _INSERT_VALUES.match(query)
    if match is None:
        return False
    depth, quote = 1, ""
    rest = query[match.end() :]
    for position, char in enumerate(rest):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return rest[position + 1 :].strip().rstrip(";").strip() == ""
    return False


def may_write(query: str) -> bool:
    """Could ``query`` have written? (Asked only after a connection was lost.)"""
    try:
        verdict = classify_postgres(query)
    except QueryError:
        return True
    return verdict.writes or verdict.refusal is not None


async def fetch(
    conn: PooledConnection[Any],
    query: str,
    args: tuple[Any, ...],
    timeout: float | None,
    script: bool,
    caps: tuple[int, int],
) -> tuple[list[Any], str]:
    """The rows and command status of ``query``, prepared once per connection.

    ``caps`` is (rows to ask for, 0 for all; result bytes, 0 for no cap).
    ``script`` lets trusted code run a multi-statement string without
    parameters through the simple protocol. asyncpg's errors propagate
    (the caller maps them), except a result past its byte cap, which is
    :class:`ResultTooLargeError`.
    """
    raw: asyncpg.Connection = conn.raw
    cache = conn.cache
    statement = cache.get(query)
    if statement is None:
        try:
            statement = await raw.prepare(query, timeout=timeout)
        except asyncpg.PostgresSyntaxError as exc:
            if not script or args or "multiple commands" not in str(exc):
                raise
            # A script of several statements and no parameters.
            status = await raw.execute(query, timeout=timeout)
            return [], status
        if len(cache) >= STATEMENT_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[query] = statement
    row_limit, max_bytes = caps
    meter = ResultMeter.of(raw) if max_bytes else None
    by_message = not row_limit
    try:
        if meter is not None:
            meter.arm(max_bytes, by_message=by_message)
        try:
            rows = await _read_rows(statement, args, row_limit, timeout)
        except asyncpg.InvalidCachedStatementError:
            # The schema changed under the cached plan: prepare once more.
            cache.pop(query, None)
            statement = await raw.prepare(query, timeout=timeout)
            cache[query] = statement
            if meter is not None:
                meter.arm(max_bytes, by_message=by_message)
            rows = await _read_rows(statement, args, row_limit, timeout)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        if meter is not None and meter.tripped:
            raise ResultTooLargeError(max_bytes) from exc
        raise
    finally:
        if meter is not None:
            meter.budget = NO_BYTE_CAP
    return rows, statement.get_statusmsg() or ""


async def _read_rows(
    statement: Any,
    args: tuple[Any, ...],
    row_limit: int,
    timeout: float | None,
    convert: bool = True,
) -> list[Any]:
    """``statement.fetch(*args)``, asking the server for at most ``row_limit`` rows.

    ``row_limit`` is Execute's maximum row count (0: all), the same message
    asyncpg's ``fetchrow`` sends with 1. asyncpg offers no other count
    outside a transaction (its cursors need one, and a round trip each), so
    this calls the private method behind ``fetch`` and ``fetchrow``; the
    asyncpg versions pyproject allows are checked by
    tests/integration/test_result_limits.py.

    asyncpg refuses ``"42"`` for an ``int4`` or ISO 8601 text for a
    ``timestamptz`` before anything is sent. The statement's parameter types,
    known since it was prepared, then decide how each value is read
    (:func:`iogate.core.coerce.coerce_postgres_args`) and it is bound once
    more (``convert=False``). Arguments that fit pay nothing: no extra call.
    """
    try:
        if not row_limit:
            rows: list[Any] = await statement.fetch(*args, timeout=timeout)
            return rows
        bind_execute = statement._PreparedStatement__bind_execute
        rows = await bind_execute(args, row_limit, timeout)
        return rows
    except asyncpg.DataError as exc:
        if not convert or getattr(exc, "severity", None) is not None:
            raise  # the server's own data error (division by zero...)
        types = [parameter.name for parameter in statement.get_parameters()]
        try:
            converted = coerce_postgres_args(types, args)
        except CoercionError as refused:
            raise QueryError(f"cannot encode parameters: {refused}") from None
        if converted is None:
            raise
    return await _read_rows(statement, converted, row_limit, timeout, False)
