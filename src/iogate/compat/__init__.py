"""The names seeds 000 and 002 use, kept working on top of iogate.

Seed code keeps running as written: ``DatabaseConnectionPool`` (raw asyncpg
connections), ``ExternalAPISession`` (a plain aiohttp session), the
tenacity-style helpers, the Prometheus decorators and the by-name context
managers. New code has better tools for each (the managers, ``RetryPolicy``,
``CircuitBreakerConfig``, ``MetricsCollector``); these stay for the seeds.

Each name is imported on first use, so ``from iogate.compat import
execute_with_retry`` does not load asyncpg or aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iogate._lazy import lazy_exports

if TYPE_CHECKING:
    from iogate.backends.http import ExternalAPISession
    from iogate.compat.context import get_api_session, get_database_connection
    from iogate.compat.metrics import (
        API_OPERATION_DURATION,
        API_OPERATION_ERRORS,
        DB_OPERATION_DURATION,
        DB_OPERATION_ERRORS,
        track_api_operation,
        track_database_operation,
    )
    from iogate.compat.pool import DatabaseConnectionPool
    from iogate.compat.retry import (
        circuit_breaker_api_call,
        execute_with_retry,
        resilient_api_operation,
        resilient_database_operation,
    )

__all__ = [
    "API_OPERATION_DURATION",
    "API_OPERATION_ERRORS",
    "DB_OPERATION_DURATION",
    "DB_OPERATION_ERRORS",
    "DatabaseConnectionPool",
    "ExternalAPISession",
    "circuit_breaker_api_call",
    "execute_with_retry",
    "get_api_session",
    "get_database_connection",
    "resilient_api_operation",
    "resilient_database_operation",
    "track_api_operation",
    "track_database_operation",
]

_EXPORTS = {
    "API_OPERATION_DURATION": "iogate.compat.metrics",
    "API_OPERATION_ERRORS": "iogate.compat.metrics",
    "DB_OPERATION_DURATION": "iogate.compat.metrics",
    "DB_OPERATION_ERRORS": "iogate.compat.metrics",
    "DatabaseConnectionPool": "iogate.compat.pool",
    # The session lives with the HTTP backend; only the name is offered here.
    "ExternalAPISession": "iogate.backends.http",
    "circuit_breaker_api_call": "iogate.compat.retry",
    "execute_with_retry": "iogate.compat.retry",
    "get_api_session": "iogate.compat.context",
    "get_database_connection": "iogate.compat.context",
    "resilient_api_operation": "iogate.compat.retry",
    "resilient_database_operation": "iogate.compat.retry",
    "track_api_operation": "iogate.compat.metrics",
    "track_database_operation": "iogate.compat.metrics",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
