"""Where a MySQL/MariaDB connection goes, and opening, resetting and closing one.

Connections run in autocommit mode with multi-statement support switched
off at the protocol level, so one call is always one statement (the server
itself refuses ``SELECT 1; DROP TABLE t``). ``reset_connection`` sends the
protocol's COM_RESET_CONNECTION and iogate's session settings again.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from asyncmy.connection import Connection as MySQLConnection
from asyncmy.constants import CLIENT, COMMAND
from asyncmy.errors import MySQLError

from iogate.backends.mysql.errors import UNKNOWN_THREAD, MySQLErrors, error_code, error_message
from iogate.core.errors import ConfigError
from iogate.core.redact import redact_url

__all__ = [
    "DEFAULT_MYSQL_PORT",
    "MySQLConnection",
    "MySQLTarget",
    "close_connection",
    "connect_mysql",
    "execute_sql",
    "is_mariadb",
    "kill_thread",
    "parse_mysql_url",
    "reset_connection",
]

logger = logging.getLogger("iogate.mysql")

DEFAULT_MYSQL_PORT = 3306
_SCHEMES = frozenset({"mysql", "mariadb", "mysql+asyncmy"})
_URL_OPTIONS = frozenset({"charset"})
STATEMENT_CACHE_SIZE = 256
_KILL_TIMEOUT = 5.0
# COM_RESET_CONNECTION, which asyncmy names COM_END (the last command it knows).
_COM_RESET_CONNECTION = COMMAND.COM_END
# The role a MariaDB session started with (its user's default role, or None),
# remembered when ``reset_session`` is on: COM_RESET_CONNECTION leaves the
# current role as it is (MariaDB 10.11), so the reset sets this one again.
_OPENING_ROLES: weakref.WeakKeyDictionary[MySQLConnection, str | None] = weakref.WeakKeyDictionary()


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
        stmt_cache_size=STATEMENT_CACHE_SIZE,
        program_name="iogate",
    )
    # asyncmy always asks for multi-statements; without them a single call
    # cannot smuggle "COMMIT; SET SESSION TRANSACTION READ WRITE; ..." past
    # a read-only session. The flag is only read during the handshake.
    conn._client_flag &= ~CLIENT.MULTI_STATEMENTS  # type: ignore[attr-defined]
    try:
        with MySQLErrors.connecting(where, target.password, timeout):
            async with asyncio.timeout(timeout):
                await conn.connect()
                if statement_timeout is not None:
                    await execute_sql(conn, _statement_timeout_sql(conn, statement_timeout))
                if remember_role and is_mariadb(conn):
                    cursor = conn.cursor()
                    await cursor.execute("SELECT CURRENT_ROLE()")
                    row = await cursor.fetchone()
                    await cursor.close()
                    _OPENING_ROLES[conn] = row[0] if row else None
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


async def execute_sql(conn: MySQLConnection, sql: str) -> None:
    """Run ``sql`` (no parameters, no rows wanted) on a raw connection."""
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
    await execute_sql(conn, settings)
    if is_mariadb(conn):
        role = _OPENING_ROLES.get(conn)
        await execute_sql(
            conn, "SET ROLE " + ("`" + role.replace("`", "``") + "`" if role else "NONE")
        )


async def close_connection(raw: MySQLConnection) -> None:
    try:
        async with asyncio.timeout(2.0):
            await raw.ensure_closed()
    finally:
        raw.close()


async def kill_thread(connect: Callable[[], Awaitable[MySQLConnection]], thread_id: int) -> None:
    """Stop an interrupted statement's server thread from a side connection."""
    try:
        async with asyncio.timeout(_KILL_TIMEOUT):
            side = await connect()
            try:
                cursor = side.cursor()
                await cursor.execute(f"KILL {int(thread_id)}")
                await cursor.close()
            finally:
                await close_connection(side)
    except MySQLError as exc:
        if error_code(exc) != UNKNOWN_THREAD:  # already gone: nothing to stop
            logger.warning("could not kill MySQL thread %s: %s", thread_id, error_message(exc))
    except Exception as exc:  # best effort: the server times the thread out anyway
        logger.warning("could not kill MySQL thread %s: %s", thread_id, type(exc).__name__)
