"""A failed ``Result`` turned into the exception seed 002's functions raise.

iogate operations return a ``Result`` and never raise for a failure. The
seed's dedicated functions return plain values (an id, a row, ``True``) and
raise ``APIError``/``QueryError``...; these two helpers bridge the styles, so
each dedicated function stays one query or one call plus one check.
"""

from __future__ import annotations

from collections.abc import Callable

from iogate import Result
from iogate.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    CircuitOpenError,
    ClosedError,
    DatabaseConnectionError,
    DatabaseError,
    HTTPStatusError,
    InvalidRequestError,
    IogateError,
    OperationTimeoutError,
    PoolExhaustedError,
    QueryError,
    RateLimitError,
    ResourceNotFoundError,
)

__all__ = ["raise_for_api", "raise_for_database"]

_DATABASE_ERRORS: dict[str, Callable[[str], IogateError]] = {
    "query_error": QueryError,
    "read_only": QueryError,
    "connection_error": DatabaseConnectionError,
    "pool_exhausted": PoolExhaustedError,
    "timeout": OperationTimeoutError,
    "invalid_request": InvalidRequestError,
    "not_found": ResourceNotFoundError,
    "closed": ClosedError,
}


def raise_for_database(result: Result, action: str) -> Result:
    """Return ``result`` if it succeeded, else raise the matching iogate error."""
    if result.success:
        return result
    message = f"{action}: {result.error}"
    if result.error_type == "circuit_open":
        raise CircuitOpenError(message, retry_after=result.retry_after)
    factory = _DATABASE_ERRORS.get(result.error_type or "", DatabaseError)
    raise factory(message)


def raise_for_api(result: Result, action: str) -> Result:
    """Return ``result`` if it succeeded, else raise the matching iogate error.

    401/403 become ``AuthenticationError``, 429 ``RateLimitError`` (seed
    names), other non-2xx ``HTTPStatusError``; timeouts and an open breaker
    keep their own classes, so ``resilient_api_operation`` retries the
    former and nothing retries the latter.
    """
    if result.success:
        return result
    message = f"{action}: {result.error}"
    status = result.status_code
    if status in (401, 403):
        raise AuthenticationError(message, status_code=status)
    if result.error_type == "rate_limited":
        raise RateLimitError(message, retry_after=result.retry_after)
    if result.error_type == "timeout":
        raise OperationTimeoutError(message)
    if result.error_type == "circuit_open":
        raise CircuitOpenError(message, retry_after=result.retry_after)
    if result.error_type == "connection_error":
        raise APIConnectionError(message)
    if result.error_type == "invalid_request":
        raise InvalidRequestError(message)
    if status is not None:
        raise HTTPStatusError(message, status_code=status)
    raise APIError(message)
