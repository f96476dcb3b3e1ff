"""asyncmy's exceptions as iogate's: the one map.

``with MySQLErrors(timeout, password):`` around asyncmy work; most
specific first, each raised ``from`` the driver's exception. By the
server's error code (https://mariadb.com/kb/en/mariadb-error-codes/): the
server's statement timeout is ``timeout``, a write a read-only server or
transaction refused is ``read_only``, a connection the server ended (and
every client-side 2xxx error) is ``connection_error``, anything else it
refused is ``query_error`` with its SQLSTATE. A client-side timeout is
``timeout``; a parameter asyncmy could not encode is ``query_error``.
``MySQLErrors.connecting(where, password, timeout)`` maps the errors of
opening a connection (``cannot connect to ...``). The password is redacted
from every message.
"""

from __future__ import annotations

from types import TracebackType

from asyncmy.errors import MySQLError

from iogate.core.deadline import deadline_error
from iogate.core.errors import (
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
    QueryError,
    ReadOnlyError,
)
from iogate.core.redact import redact_text

__all__ = [
    "UNKNOWN_THREAD",
    "MySQLErrors",
    "error_code",
    "error_message",
    "map_error",
    "translate",
]

_TIMEOUT_CODES = frozenset({1969, 3024})  # max_statement_time / max_execution_time
_READ_ONLY_CODES = frozenset({1290, 1792, 1836})  # --read-only, READ ONLY transaction
_CONNECTION_CODES = frozenset({1053, 1927, 4031})  # shutdown, killed, idle disconnect
UNKNOWN_THREAD = 1094


class MySQLErrors:
    """A context manager: asyncmy's errors raised in it leave as iogate's.

    ``timeout`` is the bound the work ran under (for the message of a
    client-side timeout), ``password`` what to redact from messages. The
    statement path (the hottest) calls :func:`map_error` from an ``except``
    clause instead: the same map without the two calls a ``with`` costs.
    """

    __slots__ = ("password", "timeout")

    def __init__(self, timeout: float | None = None, password: str = "") -> None:
        self.timeout = timeout
        self.password = password

    @staticmethod
    def connecting(where: str, password: str, timeout: float) -> MySQLErrors:
        """The map for opening a connection to ``where`` within ``timeout``."""
        return _ConnectErrors(where, password, timeout)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        error = map_error(exc, self.timeout, self.password)
        if error is not None:
            raise error from (None if isinstance(exc, TimeoutError) else exc)


class _ConnectErrors(MySQLErrors):
    """Opening a connection: every failure is ``cannot connect to ...``."""

    __slots__ = ("_where",)

    def __init__(self, where: str, password: str, timeout: float) -> None:
        super().__init__(timeout, password)
        self._where = where

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, IogateError):
            return
        if isinstance(exc, TimeoutError):
            raise DatabaseConnectionError(
                f"cannot connect to {self._where}: no answer within {self.timeout:.3g}s"
            ) from None
        if isinstance(exc, (MySQLError, OSError)):
            reason = redact_text(error_message(exc), [self.password])
            raise DatabaseConnectionError(f"cannot connect to {self._where}: {reason}") from exc


def map_error(exc: BaseException, timeout: float | None, password: str) -> IogateError | None:
    """The iogate error for ``exc``, or None when it is not the driver's to map
    (iogate's own errors, a cancellation, a bug)."""
    if isinstance(exc, IogateError):
        return None
    if isinstance(exc, MySQLError):
        return translate(exc, password)
    if isinstance(exc, TimeoutError):
        return deadline_error("the statement", budget=timeout)
    if isinstance(exc, (TypeError, ValueError, KeyError)):
        return QueryError(f"cannot encode parameters: {type(exc).__name__}: {exc}")
    return None


def translate(exc: MySQLError, password: str = "") -> IogateError:
    """asyncmy's exception as iogate's, by the server's error code."""
    code = error_code(exc)
    message = redact_text(error_message(exc), [password])
    sqlstate = getattr(exc, "sqlstate", None)
    if code in _TIMEOUT_CODES:
        return OperationTimeoutError(f"statement timeout: {message}")
    if code in _READ_ONLY_CODES:
        return ReadOnlyError(message, sqlstate=sqlstate)
    if code is None or 2000 <= code < 3000 or code in _CONNECTION_CODES:
        # 2xxx are client-side errors: the connection is gone or unusable.
        return DatabaseConnectionError(f"connection lost: {message}")
    return QueryError(message, sqlstate=sqlstate)


def error_code(exc: MySQLError) -> int | None:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, int) and first > 0 else None


def error_message(exc: BaseException) -> str:
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__
