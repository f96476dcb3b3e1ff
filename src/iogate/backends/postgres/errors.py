"""asyncpg's exceptions (and the socket's) as iogate's: the one map.

``with PostgresErrors(timeout):`` around any asyncpg call; most specific
first, each raised ``from`` the driver's exception. A connection the server
ended or lost is ``connection_error`` (the caller decides whether a write
may have been applied: ``unknown_outcome``), a statement the server
cancelled or a client-side timeout is ``timeout``, a statement it refused is
``query_error`` with its SQLSTATE (``read_only`` for a write in a read-only
transaction), a parameter asyncpg could not encode is ``query_error``
without one. ``PostgresErrors.connecting(dsn, timeout)`` maps the errors of
opening a connection (``cannot connect to ...``, the password redacted).
"""

from __future__ import annotations

from types import TracebackType

import asyncpg

from iogate.core.deadline import deadline_error
from iogate.core.errors import (
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
    QueryError,
    ReadOnlyError,
)
from iogate.core.redact import redact_text, redact_url, url_password

__all__ = ["PostgresErrors", "map_error", "translate"]

# SQLSTATEs of a connection the server ended or lost (class 08, and
# 57P01-57P03: terminated by an administrator, a crash, or shutting down).
_CONNECTION_LOST_STATES = frozenset({"57P01", "57P02", "57P03"})
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


class PostgresErrors:
    """A context manager: asyncpg's errors raised in it leave as iogate's.

    ``timeout`` is the bound the work ran under, for the message of a
    client-side timeout. A class with slots rather than a generator-based
    context manager, which costs three times as much. The statement path
    (the hottest) calls :func:`map_error` from an ``except`` clause instead:
    the same map without the two calls a ``with`` costs.
    """

    __slots__ = ("timeout",)

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout

    @staticmethod
    def connecting(dsn: str, timeout: float) -> PostgresErrors:
        """The map for opening a connection to ``dsn`` within ``timeout``."""
        return _ConnectErrors(dsn, timeout)

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
        error = map_error(exc, self.timeout)
        if error is not None:
            raise error from exc


class _ConnectErrors(PostgresErrors):
    """Opening a connection: every failure is ``cannot connect to ...``."""

    __slots__ = ("_dsn",)

    def __init__(self, dsn: str, timeout: float) -> None:
        super().__init__(timeout)
        self._dsn = dsn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, IogateError):
            return
        where = redact_url(self._dsn)
        if isinstance(exc, TimeoutError):
            raise DatabaseConnectionError(
                f"cannot connect to {where}: no answer within {self.timeout:.3g}s"
            ) from None
        if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            reason = redact_text(str(exc), [url_password(self._dsn) or ""])
            raise DatabaseConnectionError(f"cannot connect to {where}: {reason}") from exc


def map_error(exc: BaseException, timeout: float | None) -> IogateError | None:
    """The iogate error for ``exc``, or None when it is not the driver's to map
    (iogate's own errors, a cancellation, a bug)."""
    if isinstance(exc, IogateError):
        return None
    if isinstance(exc, _DRIVER_ERRORS):
        return translate(exc, timeout)
    if isinstance(exc, (ValueError, TypeError)):
        return QueryError(f"cannot encode parameters: {exc}")
    return None


def translate(exc: BaseException, timeout: float | None) -> IogateError:
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
        return deadline_error("the query", budget=timeout)
    if isinstance(exc, asyncpg.InternalClientError):
        # The protocol is in a state no operation can start from: seen when
        # the server's goodbye (a fast shutdown's FATAL) arrived while the
        # connection sat idle, before the socket closed.
        return DatabaseConnectionError(f"connection lost: {exc}")
    if isinstance(exc, asyncpg.InterfaceError) and (
        "arguments" in str(exc) or "invalid input" in str(exc)
    ):
        return QueryError(str(exc))
    return DatabaseConnectionError(f"connection lost: {type(exc).__name__}: {exc}")
