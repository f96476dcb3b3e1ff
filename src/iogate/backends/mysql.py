"""MySQL and MariaDB on asyncmy, through iogate's FIFO pool.

asyncmy is imported only here and its exceptions are mapped to iogate errors
at this edge. Connections run in autocommit mode with multi-statement
support switched off at the protocol level, so one call is always one
statement (the server itself refuses ``SELECT 1; DROP TABLE t``).

Queries may use ``?``, ``$1..$n`` or ``%s`` placeholders (one style per
query); they are rewritten to the driver's ``%s`` outside string literals,
quoted identifiers and comments, and every other ``%`` is a literal percent
sign. Statements with parameters run as server-side prepared statements
(asyncmy's statement cache), so values are bound by the server, not spliced
into the SQL text.

The server enforces ``statement_timeout`` (MariaDB ``max_statement_time``,
MySQL ``max_execution_time``, the latter for SELECT only); the connection
survives it. A request deadline shorter than that is enforced on the client:
the interrupted connection cannot be reused (the MySQL protocol has no
cancel request), so it is discarded and its server thread is killed from a
side connection, which also stops the statement and rolls back its
transaction.

Read-only work runs with ``SET SESSION TRANSACTION READ ONLY``: a plain
``START TRANSACTION READ ONLY`` is not enough, because DDL commits the
current transaction implicitly and would then run in a new, read-write one.

Guarded (untrusted) SQL, :mod:`iogate.core.sqlguard`: the statement is
classified by :mod:`iogate.backends.guard_mysql` before a connection is
touched, then runs in a transaction iogate opens and ends: a reader's in a
read-only session and transaction ended by ROLLBACK, a writer's ended by
COMMIT, so a write answered as a success is committed. Once COMMIT (or an
autocommit write) has been sent, a lost connection is ``unknown_outcome``;
before that it is a ``connection_error``: the server rolls back the open
transaction of a connection that goes away.

A connection that sat idle past ``idle_check_interval`` is checked with
the protocol's COM_PING before it is handed out (:mod:`.pool`), so one the
server ended meanwhile (``KILL``, ``wait_timeout``, a restart) is replaced
instead of failing its next caller.

Session state. Without ``reset_session``, what trusted code sets with
``SET`` (session variables, ``SET ROLE``, user variables) stays on that
pooled connection for its next user; iogate only rolls back, turns
autocommit on and unlocks tables after statements that may leave a
transaction or locks behind. With ``reset_session=True`` every connection
trusted code used is reset with the protocol's COM_RESET_CONNECTION (MariaDB
10.2+, MySQL 5.7+: session variables, role, user variables, temporary
tables, locks and prepared statements), then iogate's session settings
(character set, autocommit, statement timeout) are sent again.

Results are bounded while they are read. ``max_result_bytes`` is metered on
the socket (:class:`_ResultMeter`): every packet is charged in full as soon
as its header arrives, plus what a row becomes in Python; a packet that
would pass the cap aborts the connection before asyncmy buffers it, its
server thread is killed, and the operation fails with ``result_too_large``.
``max_rows`` cuts the rows read within that budget (``truncated``): the
server cannot be told to stop at a row count without changing the statement
or the session (``sql_select_limit`` is session state, which a connection
must give back as it got it), and an unbuffered cursor would lose the
server-side prepared path (parameters sent as text, a point query half as
slow again). So a result of more rows than ``max_rows`` is truncated while
its whole is within ``max_result_bytes``, and refused beyond it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import struct
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from asyncmy.connection import Connection as MySQLConnection
from asyncmy.constants import CLIENT, COMMAND, SERVER_STATUS
from asyncmy.errors import MySQLError

from iogate.backends.base import Transaction
from iogate.backends.guard_mysql import classify_mysql
from iogate.backends.meter import NO_BYTE_CAP, ProtocolRelay
from iogate.backends.pool import PooledConnection
from iogate.backends.pooled import PooledDatabaseManager
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    ConfigError,
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
    ParameterError,
    QueryError,
    ReadOnlyError,
    ResultTooLargeError,
    UnknownOutcomeError,
)
from iogate.core.jsonable import row_to_dict
from iogate.core.params import MAX_PARAMS, Params, normalize_params
from iogate.core.redact import redact_text, redact_url
from iogate.core.result import Result
from iogate.core.sqlguard import Access, Verdict, require

__all__ = [
    "AsyncMySQLManager",
    "MySQLConnection",
    "MySQLTarget",
    "bind_parameters",
    "connect_mysql",
    "parse_mysql_url",
]

logger = logging.getLogger("iogate.mysql")

DEFAULT_MYSQL_PORT = 3306
_SCHEMES = frozenset({"mysql", "mariadb", "mysql+asyncmy"})
_URL_OPTIONS = frozenset({"charset"})
_STATEMENT_CACHE_SIZE = 256
_RESET_TIMEOUT = 5.0
_KILL_TIMEOUT = 5.0

# Server error codes (https://mariadb.com/kb/en/mariadb-error-codes/).
_TIMEOUT_CODES = frozenset({1969, 3024})  # max_statement_time / max_execution_time
_READ_ONLY_CODES = frozenset({1290, 1792, 1836})  # --read-only, READ ONLY transaction
_CONNECTION_CODES = frozenset({1053, 1927, 4031})  # shutdown, killed, idle disconnect
_UNKNOWN_THREAD = 1094
_ASCII_DIGITS = frozenset("0123456789")

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
_RESET_STATEMENTS = ("ROLLBACK", "SET autocommit = 1", "UNLOCK TABLES")
# COM_RESET_CONNECTION, which asyncmy names COM_END (the last command it knows).
_COM_RESET_CONNECTION = COMMAND.COM_END
# The role a MariaDB session started with (its user's default role, or None),
# remembered when ``reset_session`` is on: COM_RESET_CONNECTION leaves the
# current role as it is (MariaDB 10.11), so the reset sets this one again.
_OPENING_ROLES: weakref.WeakKeyDictionary[MySQLConnection, str | None] = weakref.WeakKeyDictionary()
_LEADING_WORD = re.compile(
    r"(?:\s+|--[^\n]*(?:\n|$)|#[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]+)", re.DOTALL
)
# What a guarded statement must leave as it found: still inside iogate's
# transaction, autocommit still on (it comes back when the transaction ends).
_GUARDED_STATUS = SERVER_STATUS.SERVER_STATUS_IN_TRANS | SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
# What a received packet costs beyond its bytes once it is a row in Python (a
# tuple, then the dict it is answered as): without it, a million one-column
# rows would pass a budget they overrun ten times over in memory.
_PACKET_CHARGE = 256
# A packet header: a 3-byte little-endian length, then a sequence number.
_PACKET_HEADER = struct.Struct("<I").unpack_from
_PACKET_LENGTH = 0xFFFFFF
# Bytes of an answer the meter keeps before it reads packet headers.
_PARSE_AFTER = 64 * 1024


# -- connection target ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class MySQLTarget:
    """Where and as whom to connect, parsed from ``mysql://user:pass@host:port/db``."""

    host: str
    port: int = DEFAULT_MYSQL_PORT
    user: str | None = None
    password: str = ""
    database: str | None = None
    charset: str = "utf8mb4"

    def __repr__(self) -> str:
        # The password never appears in a repr, log line or traceback.
        return (
            f"MySQLTarget(host={self.host!r}, port={self.port}, user={self.user!r}, "
            f"password={'***' if self.password else ''!r}, database={self.database!r}, "
            f"charset={self.charset!r})"
        )


def parse_mysql_url(url: str) -> MySQLTarget:
    """``mysql://user:pass@host:port/db?charset=utf8mb4`` (also ``mariadb://``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid MySQL URL {redact_url(url)}: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"MySQL URL must start with mysql:// or mariadb://, got {redact_url(url)}"
        )
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - _URL_OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown MySQL URL option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
            f" (known: {', '.join(sorted(_URL_OPTIONS))})"
        )
    database = unquote(parts.path.lstrip("/")) or None
    return MySQLTarget(
        host=parts.hostname or "127.0.0.1",
        port=port or DEFAULT_MYSQL_PORT,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else "",
        database=database,
        charset=options.get("charset") or "utf8mb4",
    )


async def connect_mysql(
    target: MySQLTarget,
    *,
    timeout: float,
    statement_timeout: float | None,
    remember_role: bool = False,
) -> MySQLConnection:
    """One asyncmy connection: autocommit, one statement per call, server-side timeout.

    ``remember_role``: note the MariaDB role it starts with, for
    :func:`reset_connection`.
    """
    where = f"{target.host}:{target.port}"
    conn = MySQLConnection(  # type: ignore[no-untyped-call]
        host=target.host,
        port=target.port,
        user=target.user,
        password=target.password,
        database=target.database,
        charset=target.charset,
        autocommit=True,
        connect_timeout=timeout,
        # UPDATE reports matched rows, as PostgreSQL does, not changed rows.
        client_flag=CLIENT.FOUND_ROWS,
        stmt_cache_size=_STATEMENT_CACHE_SIZE,
        program_name="iogate",
    )
    # asyncmy always asks for multi-statements; without them a single call
    # cannot smuggle "COMMIT; SET SESSION TRANSACTION READ WRITE; ..." past
    # a read-only session. The flag is only read during the handshake.
    conn._client_flag &= ~CLIENT.MULTI_STATEMENTS  # type: ignore[attr-defined]
    try:
        async with asyncio.timeout(timeout):
            await conn.connect()
            if statement_timeout is not None:
                await _execute(conn, _statement_timeout_sql(conn, statement_timeout))
            if remember_role and is_mariadb(conn):
                cursor = conn.cursor()
                await cursor.execute("SELECT CURRENT_ROLE()")
                row = await cursor.fetchone()
                await cursor.close()
                _OPENING_ROLES[conn] = row[0] if row else None
    except TimeoutError:
        conn.close()
        raise DatabaseConnectionError(
            f"cannot connect to {where}: no answer within {timeout:.3g}s"
        ) from None
    except (MySQLError, OSError) as exc:
        conn.close()
        reason = redact_text(_message(exc), [target.password])
        raise DatabaseConnectionError(f"cannot connect to {where}: {reason}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def is_mariadb(conn: MySQLConnection) -> bool:
    return "mariadb" in conn.get_server_info().lower()


def _statement_timeout_sql(conn: MySQLConnection, seconds: float) -> str:
    if is_mariadb(conn):
        return f"SET SESSION max_statement_time = {seconds:.6f}"
    # MySQL's limit applies to read-only SELECT statements only.
    return f"SET SESSION max_execution_time = {max(1, round(seconds * 1000))}"


async def _execute(conn: MySQLConnection, sql: str) -> None:
    cursor = conn.cursor()
    await cursor.execute(sql)
    await cursor.close()


async def reset_connection(
    conn: MySQLConnection, charset: str, statement_timeout: float | None
) -> None:
    """COM_RESET_CONNECTION, then iogate's session settings once more.

    The reset returns the session to a new connection's state with the
    server's global defaults, so the character set, autocommit and the
    statement timeout set at connect time are sent again (one statement).
    On MariaDB, which keeps the current role through the reset, the role the
    session started with is set again (a third round trip). The server
    forgets prepared statements, so asyncmy's cache of them goes. asyncmy
    has no method for the command: its own command plumbing sends it.
    """
    await conn._execute_command(_COM_RESET_CONNECTION, b"")  # type: ignore[attr-defined]
    await conn._read_ok_packet()  # type: ignore[attr-defined]
    conn._stmt_cache.clear()  # type: ignore[attr-defined]
    settings = f"SET NAMES {charset}, autocommit = 1"
    if statement_timeout is not None:
        settings += ", " + _statement_timeout_sql(conn, statement_timeout).removeprefix("SET ")
    await _execute(conn, settings)
    if is_mariadb(conn):
        role = _OPENING_ROLES.get(conn)
        await _execute(
            conn, "SET ROLE " + ("`" + role.replace("`", "``") + "`" if role else "NONE")
        )


async def _close_connection(raw: MySQLConnection) -> None:
    try:
        async with asyncio.timeout(2.0):
            await raw.ensure_closed()
    finally:
        raw.close()


class _ResultMeter(ProtocolRelay, asyncio.BufferedProtocol):
    """Between a connection's socket and asyncmy: what a result brings in.

    Installed as the transport's protocol in front of asyncmy's buffered
    one, whose buffer it hands out; armed with a budget around one
    statement. Each packet (a 4-byte header with a 3-byte length, then its
    payload) is charged in full as soon as its header arrives, plus
    :data:`_PACKET_CHARGE`: a packet that would take the result past its
    budget aborts the connection before its payload arrives, so asyncmy
    never grows its buffer for it.

    Reading headers costs a point query more than the query's own parsing,
    so the first :data:`_PARSE_AFTER` bytes of an answer are only kept: an
    answer that ends within them (nearly every one) is never parsed here;
    one that goes on is parsed from its first byte when it passes them.
    Disarmed, the meter costs one attribute test per socket read.
    """

    __slots__ = (
        "_head",
        "_kept",
        "_protocol",
        "_skip",
        "_transport",
        "_view",
        "budget",
        "spent",
        "tripped",
    )

    def __init__(self, transport: asyncio.Transport, protocol: asyncio.BufferedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._view: memoryview | None = None
        self._kept: bytes | None = b""  # the answer so far; None once parsing
        self._skip = 0  # bytes of the current packet still to come
        self._head = b""  # the start of a header cut by a read
        self.budget = NO_BYTE_CAP
        self.spent = 0
        self.tripped = False

    def arm(self, budget: int) -> None:
        """Count from the next byte, the first of the statement's answer."""
        self._kept = b""
        self._skip = 0
        self._head = b""
        self.spent = 0
        self.budget = budget

    def get_buffer(self, sizehint: int) -> memoryview:
        view = cast(memoryview, self._protocol.get_buffer(sizehint))
        self._view = view
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view, self._view = self._view, None
        if self.budget and view is not None:
            kept = self._kept
            if kept is None:
                self.spent += self._charge(view, nbytes)
            elif len(kept) + nbytes <= _PARSE_AFTER:
                self._kept = kept + view[:nbytes]
                self.spent += nbytes
            else:
                self._kept = None
                answer = kept + view[:nbytes]
                self.spent = self._charge(answer, len(answer))
            if self.spent > self.budget:
                self.trip()
                return
        self._protocol.buffer_updated(nbytes)

    def _charge(self, data: memoryview | bytes, size: int) -> int:
        """What the packets whose headers are in ``data[:size]`` cost."""
        position = self._skip
        head = self._head
        start = position
        extra = 0  # the packet whose header was cut, and the per-packet charges
        if head:
            missing = 4 - len(head)
            if size < missing:
                self._head = head + bytes(data[:size])
                return 0
            length = _PACKET_HEADER(head + bytes(data[:missing]))[0] & _PACKET_LENGTH
            self._head = b""
            position = start = missing + length
            extra = len(head) + missing + length + _PACKET_CHARGE
        packets = 0
        while position + 4 <= size:
            position += 4 + (_PACKET_HEADER(data, position)[0] & _PACKET_LENGTH)
            packets += 1
        if position < size:
            self._head = bytes(data[position:size])
            self._skip = 0
        else:
            self._skip = position - size
        return extra + position - start + packets * _PACKET_CHARGE


# -- placeholders ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Translated:
    sql: str  # %s placeholders, every literal % doubled for the driver
    order: tuple[int, ...]  # the argument index each %s takes, in order
    expected: int  # how many arguments the query expects


_IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


@functools.lru_cache(maxsize=512)
def _translate(query: str) -> _Translated:
    """Rewrite ``?``, ``$n`` and ``%s`` to ``%s`` outside literals and comments."""
    out: list[str] = []
    order: list[int] = []
    styles: set[str] = set()
    highest_dollar = 0
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch in "'\"`":
            end = _quoted_end(query, i)
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif ch == "#" or (
            query.startswith("--", i) and (i + 2 == n or query[i + 2] in " \t\r\n\f\v")
        ):
            end = query.find("\n", i)
            end = n if end == -1 else end
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif query.startswith("/*", i):
            end = query.find("*/", i + 2)
            end = n if end == -1 else end + 2
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif ch == "?":
            styles.add("?")
            order.append(len(order))
            out.append("%s")
            i += 1
        elif (
            ch == "$"
            and i + 1 < n
            and query[i + 1] in _ASCII_DIGITS
            and (i == 0 or query[i - 1] not in _IDENTIFIER_CHARS)
        ):
            j = i + 1
            while j < n and query[j] in _ASCII_DIGITS:
                j += 1
            if j - i - 1 > len(str(MAX_PARAMS)):
                raise ParameterError(
                    f"placeholder ${query[i + 1 : i + 9]}...: at most ${MAX_PARAMS}"
                )
            position = int(query[i + 1 : j])
            if position < 1:
                raise ParameterError("placeholder $0: positions start at $1")
            if position > MAX_PARAMS:
                raise ParameterError(f"placeholder ${position}: at most ${MAX_PARAMS}")
            styles.add("$n")
            highest_dollar = max(highest_dollar, position)
            order.append(position - 1)
            out.append("%s")
            i = j
        elif ch == "%":
            if query.startswith("%s", i):
                styles.add("%s")
                order.append(len(order))
                out.append("%s")
                i += 2
            else:
                out.append("%%")
                i += 1
        else:
            out.append(ch)
            i += 1
    if len(styles) > 1:
        raise ParameterError(
            f"query mixes placeholder styles {' and '.join(sorted(styles))}; use one"
        )
    expected = highest_dollar if "$n" in styles else len(order)
    return _Translated("".join(out), tuple(order), expected)


def _quoted_end(query: str, start: int) -> int:
    """Index just past the literal or identifier opened at ``start``."""
    quote = query[start]
    i, n = start + 1, len(query)
    while i < n:
        ch = query[i]
        if ch == "\\" and quote != "`":
            i += 2  # backslash escapes (the default sql_mode)
        elif ch == quote:
            if i + 1 < n and query[i + 1] == quote:
                i += 2  # doubled quote
            else:
                return i + 1
        else:
            i += 1
    return n


def bind_parameters(query: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...] | None]:
    """The SQL and arguments to hand asyncmy, or ParameterError.

    Without arguments the query is sent untouched (asyncmy only does
    %-formatting when it is given arguments).
    """
    translated = _translate(query)
    if translated.expected != len(args):
        expected = translated.expected
        raise ParameterError(
            f"query expects {expected} parameter{'s' if expected != 1 else ''}, got {len(args)}"
        )
    if not args:
        return query, None
    return translated.sql, tuple(args[index] for index in translated.order)


@functools.lru_cache(maxsize=512)
def _as_server_reads_it(query: str) -> tuple[str, tuple[int, ...]]:
    """``query`` with a ``?`` for each placeholder, and where those are.

    This is the text the server parses: asyncmy prepares it server-side
    (turning the driver's ``%s`` into ``?`` and ``%%`` into ``%``), and its
    text-protocol fallback puts one quoted literal where each ``?`` is.
    """
    out: list[str] = []
    positions: list[int] = []
    sql = _translate(query).sql
    length = i = 0
    while i < len(sql):
        j = sql.find("%", i)
        if j == -1:
            out.append(sql[i:])
            break
        out.append(sql[i:j])
        length += j - i
        if sql.startswith("%s", j):
            positions.append(length)
            out.append("?")
        else:  # "%%": every other % in the driver's text is doubled
            out.append("%")
        length += 1
        i = j + 2
    return "".join(out), tuple(positions)


def classify_guarded(query: str) -> Verdict:
    """The guard's verdict on ``query`` as MariaDB will read it."""
    text, placeholders = _as_server_reads_it(query)
    return classify_mysql(text, placeholders)


# -- the manager -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    columns: tuple[str, ...] | None  # None: the statement returned no result set
    rows: list[tuple[Any, ...]]
    rowcount: int
    last_insert_id: int


class AsyncMySQLManager(PooledDatabaseManager[MySQLConnection]):
    """Pooled MySQL/MariaDB access returning ``Result``.

    ``AsyncMySQLManager(url, max_connections=10)`` with
    ``url = "mysql://user:pass@host:port/db"``; every other setting comes
    through ``options`` (:class:`DatabaseOptions`). ``connect`` replaces how a
    raw connection is made (a test seam).
    """

    backend = "mysql"
    bounds_result_bytes = True

    def __init__(
        self,
        url: str,
        max_connections: int | None = None,
        *,
        name: str | None = None,
        options: DatabaseOptions | None = None,
        connect: Callable[[], Awaitable[MySQLConnection]] | None = None,
    ) -> None:
        self._url = url
        self._target_url = parse_mysql_url(url)
        super().__init__(
            name=name,
            options=(options or DatabaseOptions()).with_max_connections(max_connections),
            connect=connect,
            close=_close_connection,
        )

    def __repr__(self) -> str:
        return f"<AsyncMySQLManager {self.name!r} {redact_url(self._url)} {self._pool!r}>"

    @property
    def url(self) -> str:
        """The URL with its password masked."""
        return redact_url(self._url)

    def _target(self) -> str:
        return f"{self._target_url.host}:{self._target_url.port}"

    async def _default_connect(self) -> MySQLConnection:
        return await connect_mysql(
            self._target_url,
            timeout=self.options.acquire_timeout,
            statement_timeout=self.options.statement_timeout,
            remember_role=self.options.reset_session,
        )

    # -- connections ----------------------------------------------------------

    async def _check_connection(self, raw: MySQLConnection) -> bool:
        if not raw.connected or getattr(raw, "_stream_broken", False):
            return False  # asyncmy already saw the server close the stream
        try:
            await raw.ping(reconnect=False)
        except (MySQLError, OSError):
            return False
        return True

    def release(self, conn: PooledConnection[Any], *, clean: bool = True) -> None:
        """Return a connection; ``clean=False`` resets (or discards) it first.

        Synchronous bookkeeping plus tasks of their own, so a caller being
        cancelled cannot interrupt it: the connection always comes back or
        is closed.
        """
        raw: MySQLConnection = conn.raw
        if conn.cache.pop("interrupted", False):
            # A statement was cut off mid-flight: the stream is out of step
            # and the server may still be running it.
            self._pool.release(conn, discard=True)
            self._spawn(self._kill(raw.thread_id()))
            return
        if not raw.connected:
            self._pool.release(conn, discard=True)
            return
        needs_reset = conn.cache.pop("needs_reset", False)
        if clean and not needs_reset and not raw.get_transaction_status():
            self._pool.release(conn)
            return
        self._spawn(self._reset_and_release(conn))

    async def _reset_and_release(self, conn: PooledConnection[Any]) -> None:
        raw: MySQLConnection = conn.raw
        try:
            async with asyncio.timeout(_RESET_TIMEOUT):
                if self.options.reset_session:
                    await reset_connection(
                        raw, self._target_url.charset, self.options.statement_timeout
                    )
                    conn.cache["session_read_only"] = False
                else:
                    # Sent unconditionally: asyncmy does not track a server
                    # status of 0, so "autocommit off, no transaction" looks
                    # clean to it.
                    for statement in _RESET_STATEMENTS:
                        await _execute(raw, statement)
        except BaseException:
            logger.debug("discarding a connection whose reset failed", exc_info=True)
            raw.close()
            self._pool.release(conn, discard=True)
            return
        self._pool.release(conn)

    async def _kill(self, thread_id: int) -> None:
        """Stop an interrupted statement's server thread from a side connection."""
        try:
            async with asyncio.timeout(_KILL_TIMEOUT):
                side = await self._connect()
                try:
                    cursor = side.cursor()
                    await cursor.execute(f"KILL {int(thread_id)}")
                    await cursor.close()
                finally:
                    await _close_connection(side)
        except MySQLError as exc:
            if _code(exc) != _UNKNOWN_THREAD:  # already gone: nothing to stop
                logger.warning("could not kill MySQL thread %s: %s", thread_id, _message(exc))
        except Exception as exc:  # best effort: the server times the thread out anyway
            logger.warning("could not kill MySQL thread %s: %s", thread_id, type(exc).__name__)

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
        if guard is not None:
            require(classify_guarded(query), guard)
        sql, args = bind_parameters(query, normalize_params(params))
        read_only = read_only or self.options.read_only or guard is Access.READ
        max_rows = max_rows or self.options.max_rows
        max_bytes = max_result_bytes or self.options.max_result_bytes or NO_BYTE_CAP
        conn = await self.acquire(deadline)
        clean = False
        try:
            if guard is not None:
                outcome = await self._guarded(conn, sql, args, read_only, deadline, max_bytes)
            else:
                _note_session_change(conn, query)
                await self._set_session_mode(conn, read_only, deadline)
                try:
                    outcome = await self._run(conn, sql, args, deadline, max_bytes)
                except (DatabaseConnectionError, ResultTooLargeError) as exc:
                    if not read_only and _may_write(query):  # sent in autocommit mode
                        raise UnknownOutcomeError(
                            f"{exc}; the statement may have been applied"
                        ) from exc
                    raise
            clean = True
        except (QueryError, OperationTimeoutError):
            # The server refused or timed out the statement and the session is
            # intact; a client-side interruption is caught by release() anyway.
            clean = True
            raise
        finally:
            self.release(conn, clean=self._reusable(clean, guard))
        return _to_result(outcome, max_rows, query)

    async def _guarded(
        self,
        conn: PooledConnection[Any],
        sql: str,
        args: tuple[Any, ...] | None,
        read_only: bool,
        deadline: Deadline,
        max_bytes: int,
    ) -> _Outcome:
        """One classified statement in a transaction iogate opens and ends.

        A reader's runs in a read-only session and transaction and is rolled
        back; a writer's is committed, and only a committed write is answered
        as a success. Nothing here leaves session state behind: the classifier
        let through no statement that sets any, and the server status is
        checked after it anyway.
        """
        await self._set_session_mode(conn, read_only, deadline)
        begin = "START TRANSACTION READ ONLY" if read_only else "START TRANSACTION"
        await self._run(conn, begin, None, deadline)
        try:
            outcome = await self._run(conn, sql, args, deadline, max_bytes)
            if conn.raw.server_status & _GUARDED_STATUS != _GUARDED_STATUS:
                conn.cache["needs_reset"] = True
                raise QueryError("the statement changed iogate's transaction or session")
        except (QueryError, OperationTimeoutError):
            await self._rollback_quietly(conn, deadline)
            raise
        if read_only:
            await self._rollback_quietly(conn, deadline)
        else:
            await self._commit(conn, deadline, wrote=True)
        return outcome

    async def _rollback_quietly(self, conn: PooledConnection[Any], deadline: Deadline) -> None:
        """ROLLBACK; when it cannot be sent, release() resets or discards instead."""
        if conn.cache.get("interrupted"):
            return  # the stream is out of step: the connection is discarded
        try:
            await self._run(conn, "ROLLBACK", None, deadline)
        except IogateError:
            conn.cache["needs_reset"] = True

    async def _commit(
        self, conn: PooledConnection[Any], deadline: Deadline, *, wrote: bool
    ) -> None:
        """COMMIT; once it is sent, a lost answer is ``unknown_outcome`` for a writer.

        A connection already lost before COMMIT could be sent took its
        transaction with it: that is a plain ``connection_error``.
        """
        raw: MySQLConnection = conn.raw
        if not raw.connected or getattr(raw, "_stream_broken", False):
            raise DatabaseConnectionError(
                "connection lost before COMMIT: the server rolled the transaction back"
            )
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            conn.cache["needs_reset"] = True  # the reset rolls the transaction back
            raise OperationTimeoutError("deadline passed before COMMIT: nothing was committed")
        try:
            await self._run(conn, "COMMIT", None, deadline)
        except (DatabaseConnectionError, OperationTimeoutError) as exc:
            if not wrote:
                raise
            raise UnknownOutcomeError(
                f"{exc} while committing: the transaction may have been applied"
            ) from exc

    async def _set_session_mode(
        self, conn: PooledConnection[Any], read_only: bool, deadline: Deadline
    ) -> None:
        """Make the session's transactions read-only, or read-write again.

        Read-only is set before every read-only call, never trusted from a
        previous one: a statement may have changed it since.
        """
        if read_only:
            await self._run(conn, "SET SESSION TRANSACTION READ ONLY", None, deadline)
            conn.cache["session_read_only"] = True
        elif conn.cache.get("session_read_only"):
            await self._run(conn, "SET SESSION TRANSACTION READ WRITE", None, deadline)
            conn.cache["session_read_only"] = False

    async def _run(
        self,
        conn: PooledConnection[Any],
        sql: str,
        args: tuple[Any, ...] | None,
        deadline: Deadline,
        max_bytes: int = NO_BYTE_CAP,
    ) -> _Outcome:
        """Run one statement, mapping asyncmy's errors to iogate's.

        With ``max_bytes``, its result is metered (see :class:`_ResultMeter`).
        """
        raw: MySQLConnection = conn.raw
        timeout = self._step_deadline(deadline).remaining()
        if timeout is not None and timeout <= 0:
            raise OperationTimeoutError("deadline passed before the statement was sent")
        meter = _ResultMeter.of(raw) if max_bytes else None
        try:
            async with asyncio.timeout(timeout):
                if meter is not None:
                    meter.arm(max_bytes)
                cursor = raw.cursor()
                await cursor.execute(sql, args)
                description = cursor.description
                rows = list(await cursor.fetchall()) if description else []
                outcome = _Outcome(
                    columns=tuple(column[0] for column in description) if description else None,
                    rows=rows,
                    rowcount=_count(cursor.rowcount),
                    last_insert_id=int(cursor.lastrowid or 0),
                )
                await cursor.close()
                return outcome
        except TimeoutError:
            conn.cache["interrupted"] = True
            raise OperationTimeoutError(
                f"statement did not finish within the deadline ({timeout:.3g}s)"
            ) from None
        except asyncio.CancelledError:
            conn.cache["interrupted"] = True
            raise
        except MySQLError as exc:
            if meter is not None and meter.tripped:
                # The server may still be producing rows: kill its thread.
                conn.cache["interrupted"] = True
                raise ResultTooLargeError(max_bytes) from exc
            raise self._map_error(exc) from exc
        except (TypeError, ValueError, KeyError) as exc:
            raise QueryError(f"cannot encode parameters: {type(exc).__name__}: {exc}") from exc
        finally:
            if meter is not None:
                meter.budget = NO_BYTE_CAP

    def _map_error(self, exc: MySQLError) -> IogateError:
        code = _code(exc)
        message = redact_text(_message(exc), [self._target_url.password])
        sqlstate = getattr(exc, "sqlstate", None)
        if code in _TIMEOUT_CODES:
            return OperationTimeoutError(f"statement timeout: {message}")
        if code in _READ_ONLY_CODES:
            return ReadOnlyError(message, sqlstate=sqlstate)
        if code is None or 2000 <= code < 3000 or code in _CONNECTION_CODES:
            # 2xxx are client-side errors: the connection is gone or unusable.
            return DatabaseConnectionError(f"connection lost: {message}")
        return QueryError(message, sqlstate=sqlstate)

    @asynccontextmanager
    async def _transaction_impl(
        self, read_only: bool, deadline: Deadline, guard: Access | None
    ) -> AsyncIterator[Transaction]:
        conn = await self.acquire(deadline)
        tx = _MySQLTransaction(self, conn, deadline, guard)
        read_only = read_only or self.options.read_only
        clean = False
        try:
            await self._set_session_mode(conn, read_only, deadline)
            mode = "READ ONLY" if read_only else "READ WRITE"
            await self._run(conn, f"START TRANSACTION {mode}", None, deadline)
            yield tx
            if tx.failed or (guard is not None and read_only):
                # Undo a failed transaction; a guarded reader's has nothing
                # to commit and ends with ROLLBACK too (sqlguard).
                try:
                    await self._run(conn, "ROLLBACK", None, deadline)
                except IogateError:
                    pass  # release resets or discards the connection: rolled back either way
                else:
                    clean = True
                tx.status = "rolled_back" if tx.failed else "committed"
            else:
                await self._commit(conn, deadline, wrote=not read_only)
                tx.status = "committed"
                clean = True
        finally:
            if tx.status == "active":
                tx.status = "rolled_back"
            # An open transaction left behind is rolled back by the reset.
            self.release(conn, clean=self._reusable(clean, guard))

    def _transaction(
        self, *, read_only: bool, deadline: Deadline, guard: Access | None = None
    ) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction_impl(read_only, deadline, guard)

    async def _ping(self) -> None:
        conn = await self.acquire()
        clean = False
        try:
            try:
                await conn.raw.ping(reconnect=False)
            except asyncio.CancelledError:
                conn.cache["interrupted"] = True
                raise
            except MySQLError as exc:
                raise self._map_error(exc) from exc
            clean = True
        finally:
            self.release(conn, clean=clean)


class _MySQLTransaction(Transaction):
    def __init__(
        self,
        manager: AsyncMySQLManager,
        conn: PooledConnection[Any],
        deadline: Deadline,
        guard: Access | None,
    ) -> None:
        super().__init__(guard, manager)
        self._manager = manager
        self._conn = conn
        self._deadline = deadline
        self._ended = False

    async def _execute(self, query: str, params: Params) -> Result:
        manager = self._manager
        if self._ended:
            return Result.fail(
                "the transaction was ended by an earlier statement; nothing more runs in it",
                "invalid_request",
                resource=manager.name,
                operation="query",
            )
        try:
            if self.guard is not None:
                require(classify_guarded(query), self.guard)
            sql, args = bind_parameters(query, normalize_params(params))
            if self.guard is None:
                _note_session_change(self._conn, query)
            max_bytes = manager.options.max_result_bytes or NO_BYTE_CAP
            outcome = await manager._run(self._conn, sql, args, self._deadline, max_bytes)
        except IogateError as exc:
            return Result.from_exception(exc, resource=manager.name, operation="query")
        if not self._conn.raw.get_transaction_status():
            # COMMIT, ROLLBACK or DDL (an implicit commit) ended it: later
            # statements would run outside the transaction, and outside its
            # read-only mode, so none may.
            self._ended = True
            return Result.fail(
                "statement ended the transaction (COMMIT, ROLLBACK or an implicit "
                "commit by DDL); work before it may already be committed",
                "query_error",
                resource=manager.name,
                operation="query",
            )
        result = _to_result(outcome, manager.options.max_rows, query)
        result.resource = manager.name
        return result


def _may_write(query: str) -> bool:
    """Could ``query`` have written? (Asked only after a connection was lost.)"""
    try:
        verdict = classify_guarded(query)
    except IogateError:
        return True
    return verdict.writes or verdict.refusal is not None


def _note_session_change(conn: PooledConnection[Any], query: str) -> None:
    match = _LEADING_WORD.match(query)
    if match and match.group(1).upper() in _SESSION_VERBS:
        conn.cache["needs_reset"] = True


@functools.lru_cache(maxsize=1024)
def _verb(query: str) -> str:
    """The statement's first word, upper-cased (cached: asked on every call)."""
    match = _LEADING_WORD.match(query)
    return match.group(1).upper() if match else ""


def _to_result(outcome: _Outcome, max_rows: int | None, query: str) -> Result:
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
    truncated = max_rows is not None and len(rows) > max_rows
    if truncated:
        rows = rows[:max_rows]
    columns = outcome.columns
    return Result.ok(
        [row_to_dict(columns, row) for row in rows],
        operation="query",
        rows_affected=written,
        truncated=truncated,
    )


def _count(rowcount: object) -> int:
    # asyncmy reports -1 or None when there is no count.
    return rowcount if isinstance(rowcount, int) and rowcount > 0 else 0


def _code(exc: MySQLError) -> int | None:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, int) and first > 0 else None


def _message(exc: BaseException) -> str:
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__
