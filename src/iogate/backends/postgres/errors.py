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

__all__ = ["PostgresErrors", "translate"]

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
    context manager: it wraps every statement, and costs a third as much.
    """

    __slots__ = ("_dsn", "timeout")

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self._dsn: str | None = None

    @classmethod
    def connecting(cls, dsn: str, timeout: float) -> PostgresErrors:
        """The map for opening a connection to ``dsn`` within ``timeout``."""
        errors = cls(timeout)
        errors._dsn = dsn
        return errors

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, IogateError):
            return
        if self._dsn is not None:
            error = self._not_connected(exc, self._dsn)
            if error is not None:
                raise error from (None if isinstance(exc, TimeoutError) else exc)
        elif isinstance(exc, _DRIVER_ERRORS):
            raise translate(exc, self.timeout) from exc
        elif isinstance(exc, (ValueError, TypeError)):
            raise QueryError(f"cannot encode parameters: {exc}") from exc

    def _not_connected(self, exc: BaseException, dsn: str) -> IogateError | None:
        where = redact_url(dsn)
        if isinstance(exc, TimeoutError):
            return DatabaseConnectionError(
                f"cannot connect to {where}: no answer within {self.timeout:.3g}s"
            )
        if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            reason = redact_text(str(exc), [url_password(dsn) or ""])
            return DatabaseConnectionError(f"cannot connect to {where}: {reason}")
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
