"""iogate: pooled, instrumented, resilient async access to databases and HTTP APIs.

One ``Result`` type for every operation, managers for PostgreSQL, SQLite,
MySQL/MariaDB, Redis and HTTP APIs, an orchestrator running named
operations and batches, and a gateway serving them over HTTP.

Every name below is imported on first use (PEP 562), so ``import iogate``
loads no driver and a program using only SQLite never imports asyncpg,
aiohttp or redis. The ``TYPE_CHECKING`` imports give type checkers and IDEs
the real types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iogate._lazy import lazy_exports

if TYPE_CHECKING:
    from iogate.backends.base import AsyncDatabaseManager, Transaction
    from iogate.backends.http import AsyncAPIManager
    from iogate.backends.memory import AsyncMemoryManager
    from iogate.backends.mysql import AsyncMySQLManager
    from iogate.backends.postgres import AsyncPostgreSQLManager
    from iogate.backends.redis import AsyncRedisManager
    from iogate.backends.sqlite import AsyncSQLiteManager
    from iogate.cache import Cache, cached
    from iogate.compat import (
        DatabaseConnectionPool,
        ExternalAPISession,
        circuit_breaker_api_call,
        execute_with_retry,
        get_api_session,
        get_database_connection,
        resilient_api_operation,
        resilient_database_operation,
        track_api_operation,
        track_database_operation,
    )
    from iogate.core.config import DatabaseOptions
    from iogate.core.deadline import Deadline
    from iogate.core.result import Result
    from iogate.core.sqlguard import Access
    from iogate.orchestrator import AsyncOperationOrchestrator, DatabaseType
    from iogate.resilience.breaker import CircuitBreakerConfig
    from iogate.resilience.retry import RetryPolicy

__version__ = "0.1.0"

__all__ = [
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

# Where each public name lives. The seed names come from iogate.compat.
_EXPORTS = {
    "Access": "iogate.core.sqlguard",
    "AsyncAPIManager": "iogate.backends.http",
    "AsyncDatabaseManager": "iogate.backends.base",
    "AsyncMemoryManager": "iogate.backends.memory",
    "AsyncMySQLManager": "iogate.backends.mysql",
    "AsyncOperationOrchestrator": "iogate.orchestrator",
    "AsyncPostgreSQLManager": "iogate.backends.postgres",
    "AsyncRedisManager": "iogate.backends.redis",
    "AsyncSQLiteManager": "iogate.backends.sqlite",
    "Cache": "iogate.cache",
    "CircuitBreakerConfig": "iogate.resilience.breaker",
    "DatabaseConnectionPool": "iogate.compat",
    "DatabaseOptions": "iogate.core.config",
    "DatabaseType": "iogate.orchestrator",
    "Deadline": "iogate.core.deadline",
    "ExternalAPISession": "iogate.compat",
    "Result": "iogate.core.result",
    "RetryPolicy": "iogate.resilience.retry",
    "Transaction": "iogate.backends.base",
    "cached": "iogate.cache",
    "circuit_breaker_api_call": "iogate.compat",
    "execute_with_retry": "iogate.compat",
    "get_api_session": "iogate.compat",
    "get_database_connection": "iogate.compat",
    "resilient_api_operation": "iogate.compat",
    "resilient_database_operation": "iogate.compat",
    "track_api_operation": "iogate.compat",
    "track_database_operation": "iogate.compat",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
