"""Public exceptions, with the names seed 002 uses as aliases.

The canonical classes live in :mod:`iogate.core.errors` and never shadow a
builtin. Seed 002 calls its classes ``ConnectionError`` and ``TimeoutError``;
those names are offered here as aliases so ``from iogate.errors import
TimeoutError`` works as the seed writes it, and because the canonical classes
also subclass the builtins, ``except builtins.TimeoutError`` catches them too.
"""

from __future__ import annotations

from iogate.core.errors import (
    ERROR_TYPES,
    APIConnectionError,
    APIError,
    CircuitOpenError,
    ClosedError,
    ConfigError,
    DatabaseConnectionError,
    DatabaseError,
    ErrorType,
    ForbiddenStatementError,
    HTTPStatusError,
    InvalidRequestError,
    IogateError,
    OperationTimeoutError,
    ParameterError,
    PoolExhaustedError,
    QueryError,
    RateLimitedError,
    ReadOnlyError,
    ResourceNotFoundError,
    ResultTooLargeError,
    UnknownOutcomeError,
    UpstreamAuthError,
)

# Seed 002 names (aliases; they deliberately shadow builtins only in this module).
ConnectionError = DatabaseConnectionError
TimeoutError = OperationTimeoutError
RateLimitError = RateLimitedError
AuthenticationError = UpstreamAuthError

__all__ = [
    "ERROR_TYPES",
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "CircuitOpenError",
    "ClosedError",
    "ConfigError",
    "ConnectionError",
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
    "RateLimitError",
    "RateLimitedError",
    "ReadOnlyError",
    "ResourceNotFoundError",
    "ResultTooLargeError",
    "TimeoutError",
    "UnknownOutcomeError",
    "UpstreamAuthError",
]
