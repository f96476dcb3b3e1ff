"""POST /database/execute."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from iogate.core.deadline import Deadline
from iogate.gateway.auth import Principal, principal_of
from iogate.gateway.deps import orchestrator_of, request_deadline, settings_of
from iogate.gateway.responses import problem, result_response
from iogate.gateway.settings import Settings
from iogate.orchestrator import AsyncOperationOrchestrator

__all__ = ["DatabaseExecuteRequest", "router"]

router = APIRouter(tags=["operations"])


class DatabaseExecuteRequest(BaseModel):
    """A statement (or, for Redis/memory, a key plus an operation) to run."""

    model_config = ConfigDict(extra="forbid")

    db_name: str = Field(min_length=1, description="Name of a configured database")
    query: str = Field(
        min_length=1, description="SQL with $1/? placeholders, or a key for redis/memory"
    )
    params: dict[str, Any] | list[Any] | None = Field(
        default=None, description='Positional parameters: {"1": a, "2": b} or [a, b]'
    )


@router.post("/database/execute", summary="Run one database operation")
async def database_execute(
    body: DatabaseExecuteRequest,
    orchestrator: Annotated[AsyncOperationOrchestrator, Depends(orchestrator_of)],
    settings: Annotated[Settings, Depends(settings_of)],
    deadline: Annotated[Deadline, Depends(request_deadline)],
    principal: Annotated[Principal, Depends(principal_of)],
) -> Response:
    principal.require(f"db:{body.db_name}:read")
    db = settings.databases.get(body.db_name)
    if db is not None and not db.allow_raw_sql:
        return problem(
            403,
            "Raw SQL not allowed",
            f"database {body.db_name!r} accepts only named operations (allow_raw_sql = false)",
        )
    result = await orchestrator.execute_database_operation(
        body.db_name,
        body.query,
        body.params,
        deadline=deadline,
        max_rows=settings.gateway.max_rows,
        # Without write scope the database itself refuses writes.
        read_only=not principal.can_write(body.db_name),
    )
    return result_response(result, kind="database")
