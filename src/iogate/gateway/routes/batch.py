"""POST /batch/execute: a mixed batch, one Result per operation, in order.

A batch over ``[gateway] max_batch_operations`` is refused with 422 (not
413: the body may be small; it is the request that asks for too much),
as is a batch refused as a whole (forward reference, atomic over an API
call or several databases). Otherwise the answer is 200 with every
operation's Result, whatever each outcome.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from iogate.core.deadline import Deadline
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from iogate.gateway.admission import (
    Overloaded,
    admission_of,
    batch_weights,
    overloaded_response,
)
from iogate.gateway.audit import AuditRecord, audit_of
from iogate.gateway.auth import Principal, principal_of
from iogate.gateway.deps import orchestrator_of, request_deadline, settings_of
from iogate.gateway.responses import BatchResult, ORJSONResponse, declared, encodable, problem
from iogate.gateway.routes import operations as operation_routes
from iogate.gateway.routes.database import access_kind
from iogate.gateway.settings import Settings
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.orchestrator.batch import (
    DEFAULT_CONCURRENCY,
    BatchRefusedError,
    Step,
    check_atomic,
    execute_batch,
    plan_batch,
)
from iogate.orchestrator.operations import load_operations, registry_of
from iogate.resilience.adaptive import Priority

__all__ = ["BatchExecuteRequest", "router"]

router = APIRouter(tags=["operations"])
# One entry in ROUTERS serves both: batches and the named operations.
router.include_router(operation_routes.router)
MAX_CONCURRENCY = 100


class BatchExecuteRequest(BaseModel):
    """Operations in the seed's dict format (see docs/batches-and-operations.md)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "operations": [
                        {"type": "database", "db_name": "main", "query": "SELECT 1 AS one"},
                        {"type": "operation", "name": "get_user", "params": {"id": 42}},
                    ]
                }
            ]
        },
    )

    operations: list[Any] = Field(description="database / api / transaction / operation objects")
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY)
    atomic: bool = Field(default=False, description="All SQL on one database, one transaction")


@router.post(
    "/batch/execute",
    summary="Run a mixed batch of operations",
    responses=declared(BatchResult, problem=(400, 401, 403, 413, 422, 500, 503)),
)
async def batch_execute(
    request: Request,
    body: BatchExecuteRequest,
    orchestrator: Annotated[AsyncOperationOrchestrator, Depends(orchestrator_of)],
    settings: Annotated[Settings, Depends(settings_of)],
    deadline: Annotated[Deadline, Depends(request_deadline)],
    principal: Annotated[Principal, Depends(principal_of)],
) -> Response:
    audit = audit_of(request)
    audit.touch(None, "batch")
    principal.require("batch")
    limit = settings.gateway.max_batch_operations
    if len(body.operations) > limit:
        return problem(
            422,
            "Batch too large",
            f"{len(body.operations)} operations; at most {limit} per batch "
            "([gateway] max_batch_operations)",
            limit="max_batch_operations",
        )
    max_params = settings.gateway.max_params
    try:
        steps = plan_batch(body.operations, max_params=max_params)
        if body.atomic:
            check_atomic(orchestrator, steps)
    except BatchRefusedError as exc:
        return problem(422, "Batch refused", str(exc))
    note_steps(audit, steps, settings)
    refused = authorize_steps(principal, steps, settings)
    if refused is not None:
        return refused
    load_operations(orchestrator, settings.operations)

    def guard(name: str) -> Access | None:
        return principal.sql_guard(name, settings.databases.get(name))

    admission = admission_of(request)
    weights = batch_weights(
        admission,
        steps,
        registry_of(orchestrator),
        concurrency=body.concurrency,
        atomic=body.atomic,
    )
    try:
        # Batch work queues behind every single operation (Priority.BATCH).
        held = admission.hold(weights, Priority.BATCH, deadline) if weights else nullcontext()
        async with held:
            results = await execute_batch(
                orchestrator,
                body.operations,
                concurrency=body.concurrency,
                atomic=body.atomic,
                deadline=deadline,
                max_rows=settings.gateway.max_rows,
                guard=guard,
                max_params=max_params,
            )
    except Overloaded as exc:
        audit.error_type = "overloaded"
        return overloaded_response(exc)
    try:
        return _batch_response(results, audit)
    except orjson.JSONEncodeError:
        # {"results": [{"data": ...}]}: three levels above each result's data.
        return _batch_response([encodable(r, envelope=3) for r in results], audit)


def _batch_response(results: list[Result], audit: AuditRecord) -> Response:
    failed = Counter(r.error_type or "unknown" for r in results if not r.success)
    if failed:
        audit.outcome = "partial"
    return ORJSONResponse(
        {
            "results": [r.to_dict() for r in results],
            "summary": {
                "total": len(results),
                "succeeded": len(results) - sum(failed.values()),
                "failed": dict(sorted(failed.items())),
            },
        }
    )


def note_steps(audit: AuditRecord, steps: list[Step], settings: Settings) -> None:
    """Every resource the batch names goes into the audit record before the
    scope checks, so a refused batch says what it asked for."""
    for step in steps:
        if step.error is not None:
            continue
        if step.kind in ("database", "transaction"):
            db = settings.databases.get(db_name(step.spec))
            audit.touch(f"db:{db_name(step.spec)}", access_kind(db, read_only=False))
        elif step.kind == "api":
            audit.touch(f"api:{step.spec.get('api_name')}", "api")
        else:
            audit.touch(f"ops:{step.spec.get('name')}", "operation")


def authorize_steps(principal: Principal, steps: list[Step], settings: Settings) -> Response | None:
    """Every well-formed step's scope (raises the 403), and the problem for raw
    SQL on a database that takes only named operations; None when allowed.
    For a batch and for a job alike."""
    for step in steps:
        if step.error is not None:
            continue
        principal.require(scope_of(step.kind, step.spec))
        if step.kind in ("database", "transaction"):
            db = settings.databases.get(db_name(step.spec))
            if db is not None and not db.allow_raw_sql:
                return problem(
                    403,
                    "Raw SQL not allowed",
                    f"operation {step.index}: database {db_name(step.spec)!r} accepts only "
                    "named operations (allow_raw_sql = false)",
                )
    return None


def db_name(spec: Any) -> str:
    return str(spec.get("db_name"))


def scope_of(kind: str, spec: Any) -> str:
    """The scope one batch operation needs. SQL in a batch needs write: a
    batch cannot run some operations read-only and others not."""
    if kind in ("database", "transaction"):
        return f"db:{db_name(spec)}:write"
    if kind == "api":
        return f"api:{spec.get('api_name')}"
    return f"ops:{spec.get('name')}"
