"""POST /database/execute."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from iogate.core.deadline import Deadline
from iogate.core.errors import ParameterError
from iogate.core.params import check_params_limit
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from iogate.gateway.admission import Overloaded, admission_of, admitted, overloaded_response
from iogate.gateway.audit import audit_of
from iogate.gateway.auth import Principal, principal_of
from iogate.gateway.deps import DirectRoute, orchestrator_of, request_deadline, settings_of
from iogate.gateway.responses import OPERATION_RESPONSES, problem, result_response
from iogate.gateway.settings import DatabaseSettings, Settings
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.resilience.adaptive import Priority

__all__ = ["DatabaseExecuteRequest", "access_kind", "router"]

# DirectRoute: dependencies called inline, the body validated once from bytes.
router = APIRouter(tags=["operations"], route_class=DirectRoute)


class DatabaseExecuteRequest(BaseModel):
    """A statement (or, for Redis/memory, a key plus an operation) to run."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"db_name": "main", "query": "SELECT ? AS id", "params": [42]},
                {"db_name": "cache", "query": "user:42", "params": {"operation": "get"}},
            ]
        },
    )

    db_name: str = Field(min_length=1, description="Name of a configured database")
    query: str = Field(
        min_length=1, description="SQL with $1/? placeholders, or a key for redis/memory"
    )
    params: dict[str, Any] | list[Any] | None = Field(
        default=None, description='Positional parameters: {"1": a, "2": b} or [a, b]'
    )


@router.post(
    "/database/execute", summary="Run one database operation", responses=OPERATION_RESPONSES
)
async def database_execute(
    request: Request,
    body: DatabaseExecuteRequest,
    orchestrator: Annotated[AsyncOperationOrchestrator, Depends(orchestrator_of)],
    settings: Annotated[Settings, Depends(settings_of)],
    deadline: Annotated[Deadline, Depends(request_deadline)],
    principal: Annotated[Principal, Depends(principal_of)],
) -> Response:
    db = settings.databases.get(body.db_name)
    # Untrusted SQL (no admin scope) is classified and run in a transaction
    # iogate opens: read-only for read keys, so the database refuses writes.
    guard = principal.sql_guard(body.db_name, db)
    read_only = guard is Access.READ or not principal.can_write(body.db_name)
    audit = audit_of(request)
    audit.touch(f"db:{body.db_name}", access_kind(db, read_only=read_only))
    principal.require(f"db:{body.db_name}:read")
    if db is not None and not db.allow_raw_sql:
        return problem(
            403,
            "Raw SQL not allowed",
            f"database {body.db_name!r} accepts only named operations (allow_raw_sql = false)",
        )
    params = body.params
    try:
        if type(params) is not list or len(params) > settings.gateway.max_params:
            check_params_limit(params, settings.gateway.max_params)
    except ParameterError as exc:
        # As the database's own parameter errors answer: a failed Result, 422.
        failure = Result.fail(str(exc), exc.error_type, resource=body.db_name, operation="query")
        audit.error_type = failure.error_type
        return result_response(failure, kind="database")
    # A partial, not a closure: without a limiter (the default) the call adds
    # no Python frame to the hot path.
    run = functools.partial(
        orchestrator.execute_database_operation,
        body.db_name,
        body.query,
        params,
        deadline=deadline,
        max_rows=settings.gateway.max_rows,
        max_result_bytes=settings.gateway.max_result_bytes,
        read_only=read_only,
        guard=guard,
    )
    admission = admission_of(request, settings)
    limiter = admission.limiter(body.db_name)
    if limiter is None:
        result = await run()
    else:
        try:
            result = await admitted(admission, limiter, Priority.NORMAL, deadline, run)
        except Overloaded as exc:
            audit.error_type = "overloaded"
            return overloaded_response(exc)
    audit.error_type = result.error_type
    return result_response(result, kind="database")


def access_kind(db: DatabaseSettings | None, *, read_only: bool) -> str:
    """The audit kind of one database access: ``sql:read``/``sql:write``,
    ``redis``, ``memory``; ``database`` when the name is unknown."""
    if db is None:
        return "database"
    if db.type in ("redis", "memory"):
        return db.type
    return "sql:read" if read_only or db.read_only else "sql:write"
