"""Named resources, batches and named operations."""

from iogate.orchestrator.orchestrator import (
    AsyncOperationOrchestrator,
    DatabaseType,
    create_database_manager,
    current_orchestrator,
)

__all__ = [
    "AsyncOperationOrchestrator",
    "DatabaseType",
    "create_database_manager",
    "current_orchestrator",
]
