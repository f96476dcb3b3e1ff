"""Seed 000's context managers: a manager by name, on the current orchestrator.

``async with get_database_connection("main_db") as db`` and ``async with
get_api_session("external_api") as api`` look the name up on the most
recently created or entered ``AsyncOperationOrchestrator`` (or the one
passed as ``orchestrator=``), open the manager if it is not open yet, and
hand it out. Leaving the block does not close it: the orchestrator owns its
managers and closes them when it closes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from iogate.orchestrator import current_orchestrator

if TYPE_CHECKING:
    from iogate.backends.base import AsyncDatabaseManager
    from iogate.backends.http import AsyncAPIManager
    from iogate.orchestrator import AsyncOperationOrchestrator

__all__ = ["get_api_session", "get_database_connection"]


@asynccontextmanager
async def get_database_connection(
    name: str, *, orchestrator: AsyncOperationOrchestrator | None = None
) -> AsyncIterator[AsyncDatabaseManager]:
    """``async with get_database_connection("main_db") as db: await db.execute_query(...)``."""
    manager = (orchestrator or current_orchestrator()).get_manager(name)
    await manager.initialize_pool()
    yield manager


@asynccontextmanager
async def get_api_session(
    name: str, *, orchestrator: AsyncOperationOrchestrator | None = None
) -> AsyncIterator[AsyncAPIManager]:
    """``async with get_api_session("external_api") as api: await api.get("/users/1")``."""
    manager = (orchestrator or current_orchestrator()).get_api_manager(name)
    await manager.initialize_session()
    yield manager
