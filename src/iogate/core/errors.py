"""The iogate exception tree.

IogateError
 ├── ConfigError                    bad configuration (names the key path)
 ├── ParameterError                 query parameters that cannot be bound
 ├── InvalidRequestError            a request iogate refuses before doing I/O
 │    ├── ForbiddenStatementError   a statement the caller's access may not run (guarded SQL)
 │    └── ResultTooLargeError       a result over max_result_bytes (refused, not truncated)
 ├── ResourceNotFoundError          unknown database / api / operation name
 ├── ClosedError                    use of a manager after close()
 ├── DatabaseError
 │    ├── DatabaseConnectionError   (also a builtin ConnectionError)
 │    ├── QueryError                the database refused the statement
 │    ├── ReadOnlyError             a write refused by a read-only transaction
 │    ├── UnknownOutcomeError       connection lost after a write was sent: it may have applied
 │    └── PoolExhaustedError        no connection within acquire_timeout (also TimeoutError)
 ├── OperationTimeoutError          a deadline or timeout passed (also builtin TimeoutError)
 ├── CircuitOpenError              the resource's breaker fails fast
 └── APIError
      ├── APIConnectionError        (also a builtin ConnectionError)
      ├── HTTPStatusError           the upstream answered non-2xx
      ├── RateLimitedError          a configured or upstream rate limit
      └── UpstreamAuthError         the upstream answered 401/403

Every class carries ``error_type``: the stable code a failed ``Result`` reports.
Driver exceptions are translated at the backend edge with ``raise ... from exc``;
nothing in this module imports a driver.
"""

from __future__ import annotations

import builtins
from typing import Literal, get_args

__all__ = [
    "ERROR_TYPES",
    "APIConnectionError",
    "APIError",
    "CircuitOpenError",
    "ClosedError",
    "ConfigError",
    "DatabaseConnectionError",
    "DatabaseError",
    "ErrorType",
    "ForbiddenStatementError",
    "HTTPStatusError",
    "InvalidRequestError",
    "IogateError",
    "OperationTimeoutError",
    "ParameterError",
    "PoolExhaustedError",
    "QueryError",
    "RateLimitedError",
    "ReadOnlyError",
    "ResourceNotFoundError",
    "ResultTooLargeError",
    "UnknownOutcomeError",
    "UpstreamAuthError",
    "error_for",
]


ErrorType = Literal[
    "api_error",
    "circuit_open",
    "closed",
    "config_error",
    "connection_error",
    "database_error",
    "dependency_failed",
    "forbidden_statement",
    "http_error",
    "internal_error",
    "invalid_request",
    "not_found",
    "overloaded",
    "pool_exhausted",
    "query_error",
    "rate_limited",
    "read_only",
    "result_too_large",
    "rolled_back",
    "timeout",
    "unknown",
    "unknown_outcome",
]
"""Every ``error_type`` a failed Result may carry (a closed set: metric labels
and client code can rely on it). ``rolled_back``: a batch step undone because
another step of its atomic batch failed; ``dependency_failed``: a batch step whose
``$ref`` names a failed step; ``overloaded``: refused by adaptive
concurrency; ``unknown``: an error class this version does not name."""

ERROR_TYPES: frozenset[str] = frozenset(get_args(ErrorType))


class IogateError(Exception):
    """Root of every exception iogate raises."""

    error_type: ErrorType = "unknown"


class ConfigError(IogateError):
    error_type: ErrorType = "config_error"


class InvalidRequestError(IogateError):
    error_type: ErrorType = "invalid_request"


class ParameterError(InvalidRequestError, ValueError):
    """Parameters that cannot be mapped to positional placeholders."""


class ForbiddenStatementError(InvalidRequestError):
    """A guarded statement the caller may not run (docs/security.md)."""

    error_type: ErrorType = "forbidden_statement"

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ResultTooLargeError(InvalidRequestError):
    """A result larger than ``max_result_bytes``: refused, not truncated.

    Reading stopped when the cap was passed, so no partial result exists
    that could be returned (a row may have been cut in half on the wire).
    """

    error_type: ErrorType = "result_too_large"

    def __init__(self, max_result_bytes: int, detail: str = "") -> None:
        super().__init__(
            f"the result is larger than max_result_bytes ({max_result_bytes} bytes)"
            + (f": {detail}" if detail else "")
            + "; select fewer rows or columns, or narrow the values"
        )
        self.max_result_bytes = max_result_bytes


class ResourceNotFoundError(IogateError, LookupError):
    error_type: ErrorType = "not_found"


class ClosedError(IogateError, RuntimeError):
    error_type: ErrorType = "closed"


class DatabaseError(IogateError):
    error_type: ErrorType = "database_error"


class DatabaseConnectionError(DatabaseError, builtins.ConnectionError):
    error_type: ErrorType = "connection_error"


class QueryError(DatabaseError):
    error_type: ErrorType = "query_error"

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ReadOnlyError(QueryError):
    error_type: ErrorType = "read_only"


class UnknownOutcomeError(DatabaseError, builtins.ConnectionError):
    """The connection was lost after a write (or its COMMIT) was sent:
    it may or may not have been applied. Never retried automatically."""

    error_type: ErrorType = "unknown_outcome"


class OperationTimeoutError(IogateError, builtins.TimeoutError):
    error_type: ErrorType = "timeout"


class PoolExhaustedError(DatabaseError, builtins.TimeoutError):
    error_type: ErrorType = "pool_exhausted"


class CircuitOpenError(IogateError):
    error_type: ErrorType = "circuit_open"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class APIError(IogateError):
    error_type: ErrorType = "api_error"


class APIConnectionError(APIError, builtins.ConnectionError):
    error_type: ErrorType = "connection_error"


class HTTPStatusError(APIError):
    error_type: ErrorType = "http_error"

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class RateLimitedError(APIError):
    error_type: ErrorType = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamAuthError(HTTPStatusError):
    error_type: ErrorType = "http_error"


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# error_type -> the class raised for it; shared codes take the API or the
# database class depending on where the Result came from.
_BY_TYPE: dict[str | None, type[IogateError]] = {
    "config_error": ConfigError,
    "invalid_request": InvalidRequestError,
    "forbidden_statement": InvalidRequestError,
    "result_too_large": InvalidRequestError,
    "not_found": ResourceNotFoundError,
    "closed": ClosedError,
    "database_error": DatabaseError,
    "query_error": QueryError,
    "read_only": ReadOnlyError,
    "unknown_outcome": UnknownOutcomeError,
    "pool_exhausted": PoolExhaustedError,
    "timeout": OperationTimeoutError,
    "api_error": APIError,
    "rolled_back": DatabaseError,  # undone because another step of its batch failed
    "dependency_failed": IogateError,  # a batch step whose $ref failed: not run
    "overloaded": IogateError,  # refused by the gateway's adaptive concurrency
    "internal_error": IogateError,
}
# Codes error_for decides itself, before the table.
_SPECIAL = frozenset({"circuit_open", "rate_limited", "connection_error", "http_error"})


def error_for(
    error_type: ErrorType | str | None,
    message: str,
    *,
    status_code: int | None = None,
    retry_after: float | None = None,
    api: bool = False,
) -> IogateError:
    """The iogate exception a failed Result with ``error_type`` stands for.

    ``api`` picks the API class where a code is shared (``connection_error``:
    ``APIConnectionError`` or ``DatabaseConnectionError``). A code this
    version does not know becomes the root class for its side
    (``APIError`` / ``DatabaseError``), never a bare ``Exception``.
    """
    if error_type == "circuit_open":
        return CircuitOpenError(message, retry_after=retry_after)
    if error_type == "rate_limited":
        return RateLimitedError(message, retry_after=retry_after)
    if error_type == "connection_error":
        return APIConnectionError(message) if api else DatabaseConnectionError(message)
    if error_type == "http_error" or (api and status_code is not None and status_code >= 400):
        status = status_code if status_code is not None else 502
        if status in (401, 403):
            return UpstreamAuthError(message, status_code=status)
        return HTTPStatusError(message, status_code=status)
    cls = _BY_TYPE.get(error_type)
    if cls is not None:
        return cls(message)
    return APIError(message) if api else DatabaseError(message)


def is_api_outcome(operation: str | None, status_code: int | None) -> bool:
    """Whether a Result came from an HTTP call (its operation is a method)."""
    return status_code is not None or operation in _HTTP_METHODS


def tls_reason(exc: BaseException) -> str:
    """OpenSSL's reason for a failed TLS handshake, for an error message."""
    verify_message = getattr(exc, "verify_message", None)
    if verify_message:
        return f"certificate verify failed ({verify_message})"
    return f"TLS handshake failed ({getattr(exc, 'reason', None) or type(exc).__name__})"
