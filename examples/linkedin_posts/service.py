"""Wiring: one orchestrator owning the database and the three named APIs.

The seed built a pool, three sessions and four objects by hand and closed
none of them on error. Here ``open_service`` registers everything on one
``AsyncOperationOrchestrator``; leaving the ``async with`` closes it all,
whatever happened inside.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from iogate import AsyncOperationOrchestrator, DatabaseType

from .batch import BatchOperations
from .clients import (
    AI_ANALYSIS_API,
    LINKEDIN_API,
    NOTIFICATION_API,
    AIAnalysisAPI,
    ApiSettings,
    LinkedInAPI,
    NotificationAPI,
)
from .database import DEFAULT_TABLE, LinkedInPostsDatabase

__all__ = ["DB_NAME", "DEFAULT_DATABASE_URL", "LinkedInPostsService", "open_service"]

DB_NAME = "posts_db"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True, slots=True)
class LinkedInPostsService:
    orchestrator: AsyncOperationOrchestrator
    database: LinkedInPostsDatabase
    linkedin: LinkedInAPI
    ai: AIAnalysisAPI
    notifications: NotificationAPI
    batch: BatchOperations


@asynccontextmanager
async def open_service(
    database_url: str = DEFAULT_DATABASE_URL,
    *,
    linkedin_url: str,
    ai_url: str,
    notification_url: str,
    table: str = DEFAULT_TABLE,
    max_connections: int = 10,
) -> AsyncIterator[LinkedInPostsService]:
    """Open the database pool and the API sessions; close them all on exit.

    Raises ``iogate.errors.DatabaseConnectionError`` when the database
    cannot be reached (nothing is left open then).
    """
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_database_manager(
            DB_NAME,
            DatabaseType.POSTGRESQL,
            database_url,
            max_connections=max_connections,
            statement_timeout=10,
            acquire_timeout=5,
        )
        await _add_api(orchestrator, LINKEDIN_API, linkedin_url)
        await _add_api(orchestrator, AI_ANALYSIS_API, ai_url)
        await _add_api(orchestrator, NOTIFICATION_API, notification_url)
        database = LinkedInPostsDatabase(orchestrator, DB_NAME, table=table)
        linkedin = LinkedInAPI(orchestrator.get_api_manager(LINKEDIN_API.name))
        ai = AIAnalysisAPI(orchestrator.get_api_manager(AI_ANALYSIS_API.name))
        notifications = NotificationAPI(orchestrator.get_api_manager(NOTIFICATION_API.name))
        yield LinkedInPostsService(
            orchestrator=orchestrator,
            database=database,
            linkedin=linkedin,
            ai=ai,
            notifications=notifications,
            batch=BatchOperations(database, linkedin, ai, notifications),
        )


async def _add_api(
    orchestrator: AsyncOperationOrchestrator, settings: ApiSettings, base_url: str
) -> None:
    manager = orchestrator.add_api(settings.name, settings.manager(base_url))
    await manager.initialize_session()
