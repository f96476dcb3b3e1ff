"""PostgreSQL on asyncpg, through iogate's FIFO pool.

asyncpg is imported only here and its exceptions are mapped to iogate errors
at this edge. Statements run as prepared statements cached per connection
(one round trip per query, the command status available for
``rows_affected``); for trusted code only, a multi-statement string without
parameters falls back to the simple protocol. The server enforces
``statement_timeout``; a request deadline is passed down as asyncpg's
client-side timeout, which also cancels the statement on the server.

Guarded (untrusted) SQL and ``read_only`` work never use the simple
protocol, so one operation is one statement (a prepared statement cannot
hold two). Guarded SQL is classified by PostgreSQL's own parser
(:mod:`iogate.backends.guard_postgres`) and runs in a transaction opened
here: ``BEGIN READ ONLY`` ... ``ROLLBACK`` for readers, ``BEGIN`` ...
``COMMIT`` for writers, so whatever session state the statement touched
transactionally is undone or committed by the server itself.

A connection lost mid-operation is ``connection_error`` when nothing can
have been written, ``unknown_outcome`` when a write (or its COMMIT) was sent
and its answer lost. A connection that sat idle past ``idle_check_interval``
is checked with ``SELECT 1`` before it is handed out (:mod:`.pool`), so
one the server ended meanwhile (a restart, a failover,
``pg_terminate_backend``) is replaced instead of failing its next caller.

Session state. Without ``reset_session``, what trusted code sets on its
session (``SET search_path``, ``SET ROLE``, a temporary table) stays on that
pooled connection for its next user, unless the call failed or left a
transaction open (then the connection is reset). ``SET LOCAL`` inside
``transaction()`` ends with the transaction. With ``reset_session=True``
every connection trusted code used is reset before it goes back to the
pool: asyncpg's ``reset()`` (ROLLBACK, ``CLOSE ALL``, ``UNLISTEN *``,
advisory locks, ``RESET ALL``) preceded by ``SET SESSION AUTHORIZATION
DEFAULT`` (``RESET ALL`` leaves the role alone) and followed by ``DISCARD
TEMP``: what ``DISCARD ALL`` does except deallocating the prepared
statements the connection keeps cached. Guarded SQL needs no reset (it can
set nothing and runs in a transaction iogate ends).

Results are bounded while they are read. ``max_rows`` is sent with the
statement as the extended protocol's row count (Execute's limit, as asyncpg's
``fetchrow`` sends 1): the server stops at ``max_rows + 1`` rows and the SQL
is unchanged; a write still runs to completion, only the rows it returns are
cut. ``max_result_bytes`` is counted on the socket (:class:`_ResultMeter`):
once a result has brought in more than that (one 150 MB value, say), the
connection is aborted before asyncpg buffers the rest, and the operation
fails with ``result_too_large``; the server ends the statement and rolls
back its transaction when the connection goes. Without a row cap each row
also counts what it costs in Python. A point query still takes one round
trip, plus a few attribute stores.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import orjson

from iogate.backends.base import Transaction
from iogate.backends.guard_postgres import classify_postgres
from iogate.backends.meter import NO_BYTE_CAP, ProtocolRelay
from iogate.backends.pool import PooledConnection
from iogate.backends.pooled import PooledDatabaseManager
from iogate.core.coerce import CoercionError, coerce_postgres_args
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
    QueryError,
    ReadOnlyError,
    ResultTooLargeError,
    UnknownOutcomeError,
)
from iogate.core.jsonable import row_to_dict
from iogate.core.params import Params, check_count, normalize_params
from iogate.core.redact import redact_text, redact_url, url_password
from iogate.core.result import Result
from iogate.core.sqlguard import Access, require

__all__ = ["AsyncPostgreSQLManager", "PgConnection", "connect_postgres"]

logger = logging.getLogger("iogate.postgres")

PgConnection = asyncpg.Connection
_STATEMENT_CACHE_SIZE = 256
_RESET_TIMEOUT = 5.0
# Run before and after asyncpg's own reset query (see the module docstring).
_RESET_ROLE = "SET SESSION AUTHORIZATION DEFAULT;"
_RESET_TEMP = "DISCARD TEMP;"
_WRITE_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "COPY"})
# SQLSTATEs of a connection the server ended or lost (class 08, and
# 57P01-57P03: terminated by an administrator, a crash, or shutting down).
_CONNECTION_LOST_STATES = frozenset({"57P01", "57P02", "57P03"})
_BEGIN = {True: "BEGIN READ ONLY", False: "BEGIN"}
# What a message costs beyond its bytes once it is a row in Python (a Record,
# then the dict it is answered as): without it, a million one-column rows
# would pass a budget they overrun ten times over in memory.
_MESSAGE_CHARGE = 256
_MESSAGE_LENGTH = struct.Struct("!I").unpack_from
_INSERT_VALUES = re.compile(r"^\s*INSERT\s+INTO\s+[^;]*?\bVALUES\s*\(", re.IGNORECASE | re.DOTALL)
T = TypeVar("T")


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


class _Connection(asyncpg.Connection):
    """asyncpg's connection whose reset also restores the role and drops temp tables.

    ``get_reset_query`` is asyncpg's documented way to extend what
    ``reset()`` sends (one round trip).
    """

    def get_reset_query(self) -> str:
        return f"{_RESET_ROLE}\n{super().get_reset_query()}\n{_RESET_TEMP}"


async def connect_postgres(
    dsn: str, *, timeout: float, statement_timeout: float | None
) -> asyncpg.Connection:
    """One asyncpg connection with iogate's codecs and session settings."""
    settings = {"application_name": "iogate"}
    if statement_timeout is not None:
        settings["statement_timeout"] = str(max(1, int(statement_timeout * 1000)))
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn, timeout=timeout, server_settings=settings, connection_class=_Connection
        )
    except TimeoutError:
        raise DatabaseConnectionError(
            f"cannot connect to {redact_url(dsn)}: no answer within {timeout:.3g}s"
        ) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = redact_text(str(exc), [url_password(dsn) or ""])
        raise DatabaseConnectionError(f"cannot connect to {redact_url(dsn)}: {reason}") from exc
    try:
        for type_name in ("json", "jsonb"):
            await conn.set_type_codec(
                type_name,
                encoder=_json_encode,
                decoder=orjson.loads,
                schema="pg_catalog",
            )
    except BaseException:
        conn.terminate()
        raise
    return conn


def _json_encode(value: Any) -> str:
    if isinstance(value, str):
        return value  # already JSON text
    return orjson.dumps(value).decode()


class _ResultMeter(ProtocolRelay, asyncio.Protocol):
    """Between a connection's socket and asyncpg: what a result brings in.

    Installed as the transport's protocol in front of asyncpg's (which it
    feeds); armed with a budget around one statement, past which it aborts
    the connection before asyncpg has buffered or decoded the rest.

    With ``by_message``, it reads each message's header (a type byte and a
    4-byte length) as it arrives and charges the whole message then, plus
    :data:`_MESSAGE_CHARGE`: a message that would pass the budget aborts
    the connection before its payload is read. That is for results with no
    row cap, where a million tiny rows must cost what they take in Python.
    With a row cap (the server sends at most ``max_rows + 1`` rows) it
    counts bytes alone, which is cheaper, and a huge row is cut once the
    budget's worth of it has arrived. Disarmed, it costs one attribute test
    per socket read.
    """

    __slots__ = (
        "_by_message",
        "_head",
        "_protocol",
        "_skip",
        "_transport",
        "budget",
        "spent",
        "tripped",
    )

    def __init__(self, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._by_message = False
        self._skip = 0  # bytes of the current message still to come
        self._head = b""  # the start of a header cut by a read
        self.budget = NO_BYTE_CAP
        self.spent = 0
        self.tripped = False

    def arm(self, budget: int, *, by_message: bool) -> None:
        """Count from the next byte, the first of the statement's answer."""
        self._by_message = by_message
        self._skip = 0
        self._head = b""
        self.spent = 0
        self.budget = budget

    def data_received(self, data: bytes) -> None:
        if self.budget:
            self.spent += self._charge(data) if self._by_message else len(data)
            if self.spent > self.budget:
                self.trip()
                return
        self._protocol.data_received(data)

    def _charge(self, data: bytes) -> int:
        """What the messages whose headers are in ``data`` cost."""
        size = len(data)
        charge = 0
        position = self._skip
        head = self._head
        if head:
            missing = 5 - len(head)
            if size < missing:
                self._head = head + data
                return 0
            length = _MESSAGE_LENGTH(head + data[:missing], 1)[0]
            self._head = b""
            position = missing + length - 4
            charge = 1 + length + _MESSAGE_CHARGE
        while position + 5 <= size:
            length = _MESSAGE_LENGTH(data, position + 1)[0]
            position += 1 + length
            charge += 1 + length + _MESSAGE_CHARGE
        if position < size:
            self._head = data[position:]
            self._skip = 0
        else:
            self._skip = position - size
        return charge


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


class AsyncPostgreSQLManager(PooledDatabaseManager[asyncpg.Connection]):
    """Pooled PostgreSQL access returning ``Result`` (seed 000).

    ``AsyncPostgreSQLManager(dsn, max_connections=20)`` as in the seed; every
    other setting comes through ``options`` (:class:`DatabaseOptions`).
    ``connect`` replaces how a raw connection is made (a test seam).
    """

    backend = "postgresql"
    bounds_result_bytes = True

    def __init__(
        self,
        dsn: str,
        max_connections: int | None = None,
        *,
        name: str | None = None,
        options: DatabaseOptions | None = None,
        connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
    ) -> None:
        self._dsn = dsn
        super().__init__(
            name=name,
            options=(options or DatabaseOptions()).with_max_connections(max_connections),
            connect=connect,
            close=_close_connection,
        )

    def __repr__(self) -> str:
        return f"<AsyncPostgreSQLManager {self.name!r} {redact_url(self._dsn)} {self._pool!r}>"

    @property
    def dsn(self) -> str:
        """The DSN with its password masked."""
        return redact_url(self._dsn)

    def _target(self) -> str:
        return redact_url(self._dsn)

    async def _default_connect(self) -> asyncpg.Connection:
        return await connect_postgres(
            self._dsn,
            timeout=self.options.acquire_timeout,
            statement_timeout=self.options.statement_timeout,
        )

    # -- connections ----------------------------------------------------------

    async def _check_connection(self, raw: asyncpg.Connection) -> bool:
        if raw.is_closed():  # asyncpg already read the server's goodbye
            return False
        try:
            await raw.execute("SELECT 1")
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ):
            return False
        return True

    def release(self, conn: PooledConnection[Any], *, clean: bool = True) -> None:
        """Return a connection; ``clean=False`` resets (or discards) it first.

        The reset runs in its own task, so a caller being cancelled cannot
        interrupt it: the connection always comes back or is closed.
        """
        raw: asyncpg.Connection = conn.raw
        if clean and not raw.is_in_transaction():
            self._pool.release(conn)
            return
        if raw.is_closed():
            self._pool.release(conn, discard=True)
            return
        self._spawn(self._reset_and_release(conn))

    async def _reset_and_release(self, conn: PooledConnection[Any]) -> None:
        raw: asyncpg.Connection = conn.raw
        try:
            async with asyncio.timeout(_RESET_TIMEOUT):
                # Each waits for asyncpg's cancel request of an interrupted
                # statement first. iogate's own BEGIN is not asyncpg's
                # transaction: rolled back here, reset() would log an error.
                if raw.is_in_transaction():
                    await raw.execute("ROLLBACK")
                await raw.reset()
        except BaseException:
            logger.debug("discarding a connection whose reset failed", exc_info=True)
            raw.terminate()
            self._pool.release(conn, discard=True)
            return
        self._pool.release(conn)

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
        args = normalize_params(params)
        check_count(query, args, "dollar")
        if guard is not None:
            require(classify_postgres(query), guard)
        read = read_only or guard is Access.READ or self.options.read_only
        max_rows = max_rows or self.options.max_rows
        caps = (
            max_rows + 1 if max_rows else 0,
            max_result_bytes or self.options.max_result_bytes or NO_BYTE_CAP,
        )
        conn = await self.acquire(deadline)
        clean = False
        try:
            if read or guard is not None:
                rows, status = await self._in_transaction(conn, query, args, deadline, read, caps)
            else:
                try:
                    rows, status = await self._run(conn, query, args, deadline, caps, script=True)
                except (DatabaseConnectionError, ResultTooLargeError) as exc:
                    # Autocommit: a write may have committed before its
                    # answer (or the rest of its RETURNING rows) was lost.
                    if _may_write(query):
                        raise UnknownOutcomeError(
                            f"{exc}; the statement may have been applied"
                        ) from exc
                    raise
            clean = True
        except QueryError as exc:
            # The server refused the statement (it has a SQLSTATE): the session
            # is intact. A client-side failure (parameter encoding) can leave
            # the protocol mid-request holding locks: reset or discard.
            clean = exc.sqlstate is not None
            raise
        finally:
            self.release(conn, clean=self._reusable(clean, guard))
        return _to_result(rows, status, max_rows)

    async def _in_transaction(
        self,
        conn: PooledConnection[Any],
        query: str,
        args: tuple[Any, ...],
        deadline: Deadline,
        read: bool,
        caps: tuple[int, int],
    ) -> tuple[list[Any], str]:
        """One statement in a transaction opened and ended here.

        Read: ``BEGIN READ ONLY`` ... ``ROLLBACK``. Write: ``BEGIN`` ...
        ``COMMIT``; a connection lost once COMMIT was sent is
        ``unknown_outcome``. A statement the server refused is rolled back
        here, so the connection goes back to the pool as it came; one whose
        result was too large lost its connection, and with it the transaction.
        """
        raw: asyncpg.Connection = conn.raw
        await self._begin(raw, read, deadline)
        try:
            outcome = await self._run(conn, query, args, deadline, caps)
        except QueryError:
            # Refused by the server, or a parameter asyncpg could not encode
            # (nothing was sent): end the transaction here either way.
            await self._rollback(raw, deadline)
            raise
        if read:
            await self._rollback(raw, deadline)
        else:
            await self._commit(raw, deadline)
        return outcome

    async def _run(
        self,
        conn: PooledConnection[Any],
        query: str,
        args: tuple[Any, ...],
        deadline: Deadline,
        caps: tuple[int, int],
        *,
        script: bool = False,
    ) -> tuple[list[Any], str]:
        """Run one statement, mapping asyncpg's errors to iogate's.

        ``caps`` is (rows to ask for, 0 for all; result bytes, 0 for no cap).
        ``script`` lets trusted code run a multi-statement string without
        parameters through the simple protocol.
        """
        timeout = self._step_deadline(deadline).remaining()
        work = self._fetch(conn, conn.raw, query, args, timeout, script, caps)
        return await self._mapped(work, timeout)

    def _caps(self) -> tuple[int, int]:
        """The options' caps, for statements run without per-call ones."""
        max_rows = self.options.max_rows
        return (max_rows + 1 if max_rows else 0, self.options.max_result_bytes or NO_BYTE_CAP)

    async def _mapped(self, work: Awaitable[T], timeout: float | None) -> T:
        """Await asyncpg work, mapping its errors to iogate's."""
        try:
            return await work
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise _translate(exc, timeout) from exc
        except asyncpg.InternalClientError as exc:
            # The protocol is in a state no operation can start from: seen when
            # the server's goodbye (a fast shutdown's FATAL) arrived while the
            # connection sat idle, before the socket closed.
            raise DatabaseConnectionError(f"connection lost: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise QueryError(f"cannot encode parameters: {exc}") from exc

    async def _fetch(
        self,
        conn: PooledConnection[Any],
        raw: asyncpg.Connection,
        query: str,
        args: tuple[Any, ...],
        timeout: float | None,
        script: bool,
        caps: tuple[int, int],
    ) -> tuple[list[Any], str]:
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
            if len(cache) >= _STATEMENT_CACHE_SIZE:
                cache.pop(next(iter(cache)))
            cache[query] = statement
        row_limit, max_bytes = caps
        meter = _ResultMeter.of(raw) if max_bytes else None
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

    async def execute_many(
        self,
        query: str,
        params_list: Sequence[Params],
        *,
        deadline: Deadline | None = None,
        guard: Access | None = None,
    ) -> list[Result] | None:
        """One statement per parameter set, in one transaction: all or nothing.

        Returns a Result per parameter set, or None when a statement was
        refused and the transaction rolled back (nothing was written; run them
        one by one to find which). A plain single-row ``INSERT ... VALUES``
        goes through asyncpg's pipelined ``executemany``: one round trip for
        the lot, each Result reporting one row. Anything else runs statement
        by statement on one connection so each Result keeps its own
        ``rows_affected``. A statement ``guard`` refuses fails every Result
        without touching the database. Lost connections and deadlines raise.
        """
        await self._ensure_open()
        if guard is not None:
            try:
                require(classify_postgres(query), guard)
            except IogateError as exc:
                return [
                    Result.from_exception(exc, resource=self.name, operation="query")
                    for _ in params_list
                ]
        # Without a deadline each step is bounded (see _step_deadline).
        deadline = deadline or Deadline.never()
        args_list = [normalize_params(params) for params in params_list]
        for args in args_list:
            check_count(query, args, "dollar")
        read = guard is Access.READ or self.options.read_only
        conn = await self.acquire(deadline)
        clean = False
        try:
            await self._begin(conn.raw, read, deadline)
            try:
                results = await self._many(conn, query, args_list, deadline)
            except QueryError as exc:
                if exc.sqlstate is None:
                    raise
                await self._rollback(conn.raw, deadline)
                clean = True
                return None
            try:
                await self._commit(conn.raw, deadline)
            except QueryError:  # raised by COMMIT itself (deferred checks)
                clean = True
                return None
            clean = True
        except QueryError as exc:
            clean = exc.sqlstate is not None
            return None
        except ResultTooLargeError:
            # The connection was aborted, so the transaction is rolled back:
            # run one by one, where only that statement fails.
            return None
        finally:
            self.release(conn, clean=self._reusable(clean, guard))
        return results

    async def _many(
        self,
        conn: PooledConnection[Any],
        query: str,
        args_list: list[tuple[Any, ...]],
        deadline: Deadline,
    ) -> list[Result]:
        if is_single_row_insert(query):
            timeout = self._step_deadline(deadline).remaining()
            await self._mapped(conn.raw.executemany(query, args_list, timeout=timeout), timeout)
            return [
                Result.ok([], resource=self.name, operation="query", rows_affected=1)
                for _ in args_list
            ]
        results = []
        caps = self._caps()
        for args in args_list:
            rows, status = await self._run(conn, query, args, deadline, caps)
            result = _to_result(rows, status, self.options.max_rows)
            result.resource = self.name
            results.append(result)
        return results

    # -- transactions -----------------------------------------------------------

    async def _begin(self, raw: asyncpg.Connection, read: bool, deadline: Deadline) -> None:
        timeout = self._step_deadline(deadline).remaining()
        await self._mapped(raw.execute(_BEGIN[read], timeout=timeout), timeout)

    async def _rollback(self, raw: asyncpg.Connection, deadline: Deadline) -> None:
        timeout = self._step_deadline(deadline).remaining()
        await self._mapped(raw.execute("ROLLBACK", timeout=timeout), timeout)

    async def _commit(self, raw: asyncpg.Connection, deadline: Deadline) -> None:
        """COMMIT; once it is sent, a lost answer is ``unknown_outcome``.

        A connection already lost before COMMIT could be sent took its
        transaction with it: that is a plain ``connection_error``.
        """
        if raw.is_closed():
            raise DatabaseConnectionError(
                "connection lost before COMMIT: the server rolled the transaction back"
            )
        timeout = self._step_deadline(deadline).remaining()
        try:
            await self._mapped(raw.execute("COMMIT", timeout=timeout), timeout)
        except (DatabaseConnectionError, OperationTimeoutError) as exc:
            raise UnknownOutcomeError(
                f"{exc} while committing: the transaction may have been applied"
            ) from exc

    @asynccontextmanager
    async def _transaction_impl(
        self, read_only: bool, deadline: Deadline, guard: Access | None
    ) -> AsyncIterator[Transaction]:
        conn = await self.acquire(deadline)
        raw: asyncpg.Connection = conn.raw
        tx = _PgTransaction(self, conn, deadline, guard)
        read = read_only or self.options.read_only
        clean = False
        try:
            await self._begin(raw, read, deadline)
            try:
                yield tx
            except BaseException:
                tx.failed = True
                raise
            finally:
                if tx.failed or read:
                    # A read-only transaction has nothing to commit. A
                    # ROLLBACK that cannot be sent needs no retry: the server
                    # rolls back the transaction of a connection that is gone
                    # (and release() resets or discards this one).
                    try:
                        await self._rollback(raw, deadline)
                        clean = True
                    except (DatabaseConnectionError, OperationTimeoutError):
                        logger.debug("ROLLBACK at the end of a transaction failed", exc_info=True)
                    tx.status = "rolled_back" if tx.failed else "committed"
                else:
                    await self._commit(raw, deadline)
                    tx.status = "committed"
                    clean = True
        finally:
            if tx.status == "active":
                tx.status = "rolled_back"
            self.release(conn, clean=self._reusable(clean, guard))

    def _transaction(
        self, *, read_only: bool, deadline: Deadline, guard: Access | None = None
    ) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction_impl(read_only, deadline, guard)

    async def _ping(self) -> None:
        conn = await self.acquire()
        clean = False
        try:
            await self._mapped(conn.raw.fetchval("SELECT 1"), None)
            clean = True
        finally:
            self.release(conn, clean=clean)


class _PgTransaction(Transaction):
    def __init__(
        self,
        manager: AsyncPostgreSQLManager,
        conn: PooledConnection[Any],
        deadline: Deadline,
        guard: Access | None,
    ) -> None:
        super().__init__(guard, manager)
        self._manager = manager
        self._conn = conn
        self._deadline = deadline

    async def _execute(self, query: str, params: Params) -> Result:
        args = normalize_params(params)
        check_count(query, args, "dollar")
        try:
            if self.guard is not None:
                require(classify_postgres(query), self.guard)
            manager = self._manager
            rows, status = await manager._run(
                self._conn, query, args, self._deadline, manager._caps()
            )
        except IogateError as exc:
            return Result.from_exception(exc, resource=self._manager.name, operation="query")
        result = _to_result(rows, status, self._manager.options.max_rows)
        result.resource = self._manager.name
        return result


def _translate(exc: BaseException, timeout: float | None) -> IogateError:
    """asyncpg's exception (or the socket's) as iogate's, most specific first."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state.startswith("08") or state in _CONNECTION_LOST_STATES:
            # Also asyncpg's own ConnectionDoesNotExistError (08003).
            return DatabaseConnectionError(f"connection lost: {exc}")
        if isinstance(exc, asyncpg.QueryCanceledError):
            return OperationTimeoutError(
                f"statement cancelled: {exc.args[0] if exc.args else 'statement timeout'}"
            )
        if isinstance(exc, asyncpg.DataError) and getattr(exc, "severity", None) is None:
            # Raised by asyncpg itself while encoding a parameter (it carries a
            # class SQLSTATE but the server never answered, so no severity):
            # no sqlstate here, so the connection is reset before reuse. The
            # server's own data errors (division by zero...) have a severity.
            return QueryError(f"cannot encode parameters: {exc}")
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            return ReadOnlyError(str(exc), sqlstate=exc.sqlstate)
        return QueryError(str(exc), sqlstate=exc.sqlstate)
    if isinstance(exc, TimeoutError):
        return OperationTimeoutError(
            f"query did not finish within the deadline ({timeout:.3g}s)"
            if timeout is not None
            else "query timed out"
        )
    if isinstance(exc, asyncpg.InterfaceError) and (
        "arguments" in str(exc) or "invalid input" in str(exc)
    ):
        return QueryError(str(exc))
    return DatabaseConnectionError(f"connection lost: {type(exc).__name__}: {exc}")


def _may_write(query: str) -> bool:
    """Could ``query`` have written? (Asked only after a connection was lost.)"""
    try:
        verdict = classify_postgres(query)
    except QueryError:
        return True
    return verdict.writes or verdict.refusal is not None


def _to_result(rows: list[Any], status: str, max_rows: int | None) -> Result:
    truncated = max_rows is not None and len(rows) > max_rows
    if truncated:
        rows = rows[:max_rows]
    if rows:
        keys = list(rows[0].keys())
        data: list[dict[str, Any]] = [row_to_dict(keys, row.values()) for row in rows]
    else:
        data = []
    verb, _, rest = status.partition(" ")
    rows_affected = None
    if verb in _WRITE_VERBS:
        count = rest.rsplit(" ", 1)[-1]
        rows_affected = int(count) if count.isdigit() else None
    return Result.ok(data, operation="query", rows_affected=rows_affected, truncated=truncated)


async def _close_connection(raw: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(raw.close(), timeout=2.0)
    except BaseException:
        raw.terminate()
        raise
