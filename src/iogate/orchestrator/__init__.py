"""Named resources, batches and named operations."""

from iogate.orchestrator.orchestrator import (
    AsyncOperationOrchestrator,
    DatabaseType,
    create_database_manager,
    current_orchestrator,
    get_api_session,
    get_database_connection,
)

__all__ = [
    "AsyncOperationOrchestrator",
    "DatabaseType",
    "create_database_manager",
    "current_orchestrator",
    "get_api_session",
    "get_database_connection",
]
