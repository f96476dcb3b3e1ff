"""The public names, pinned: ``iogate.__all__`` and ``iogate.errors.__all__``.

Adding, removing or renaming a public name is an API change; it must show up
here as an edit to one of these lists.
"""

from __future__ import annotations

import types

import iogate
from iogate import errors

IOGATE_ALL = [
    "Access",
    "AsyncAPIManager",
    "AsyncDatabaseManager",
    "AsyncMemoryManager",
    "AsyncMySQLManager",
    "AsyncOperationOrchestrator",
    "AsyncPostgreSQLManager",
    "AsyncRedisManager",
    "AsyncSQLiteManager",
    "Cache",
    "CircuitBreakerConfig",
    "DatabaseConnectionPool",
    "DatabaseOptions",
    "DatabaseType",
    "Deadline",
    "ExternalAPISession",
    "Result",
    "RetryPolicy",
    "Transaction",
    "__version__",
    "cached",
    "circuit_breaker_api_call",
    "execute_with_retry",
    "get_api_session",
    "get_database_connection",
    "resilient_api_operation",
    "resilient_database_operation",
    "track_api_operation",
    "track_database_operation",
]

# Sorted here; iogate.errors lists ERROR_TYPES first, so only the contents are pinned.
ERRORS_ALL = [
    "APIConnectionError",
    "APIError",
    "AuthenticationError",
    "CircuitOpenError",
    "ClosedError",
    "ConfigError",
    "ConnectionError",
    "DatabaseConnectionError",
    "DatabaseError",
    "ERROR_TYPES",
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


def test_iogate_all_is_the_pinned_sorted_list() -> None:
    assert iogate.__all__ == IOGATE_ALL
    assert iogate.__all__ == sorted(iogate.__all__)


def test_every_iogate_name_resolves() -> None:
    for name in iogate.__all__:
        assert getattr(iogate, name) is not None, name


def test_iogate_errors_all_holds_the_pinned_names_once() -> None:
    assert sorted(errors.__all__) == ERRORS_ALL
    assert len(set(errors.__all__)) == len(errors.__all__)


def test_every_iogate_errors_name_resolves() -> None:
    for name in errors.__all__:
        assert getattr(errors, name) is not None, name


def test_iogate_errors_exports_every_public_name_it_defines() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    }
    assert defined == set(errors.__all__)
