"""iogate: pooled, instrumented, resilient async access to databases and HTTP APIs.

One ``Result`` type for every operation, managers for PostgreSQL, SQLite,
MySQL/MariaDB, Redis and HTTP APIs, an orchestrator running named
operations and batches, and a gateway serving them over HTTP.
"""

from iogate.backends.base import AsyncDatabaseManager, Transaction
from iogate.backends.http import AsyncAPIManager, ExternalAPISession
from iogate.backends.memory import AsyncMemoryManager
from iogate.backends.pg_pool import DatabaseConnectionPool
from iogate.backends.postgres import AsyncPostgreSQLManager
from iogate.backends.redis import AsyncRedisManager
from iogate.backends.sqlite import AsyncSQLiteManager
from iogate.cache import Cache, cached
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from iogate.metrics import track_api_operation, track_database_operation
from iogate.orchestrator import (
    AsyncOperationOrchestrator,
    DatabaseType,
    get_api_session,
    get_database_connection,
)
from iogate.resilience.breaker import CircuitBreakerConfig
from iogate.resilience.helpers import (
    circuit_breaker_api_call,
    execute_with_retry,
    resilient_api_operation,
    resilient_database_operation,
)
from iogate.resilience.retry import RetryPolicy

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # asyncmy is an optional extra: import the MySQL manager only when asked.
    if name == "AsyncMySQLManager":
        from iogate.backends.mysql import AsyncMySQLManager

        return AsyncMySQLManager
    raise AttributeError(f"module 'iogate' has no attribute {name!r}")


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
