"""Named operations over HTTP: ``GET /operations`` and ``POST /operations/{name}``.

The request body is the operation's parameters by name (``{"id": 42}``); a
missing or extra parameter is a 422 naming it. Operations come from
``[operations.NAME]`` in the config and from ``@operation`` in Python.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from starlette.responses import Response

from iogate.core.deadline import Deadline
from iogate.gateway.audit import audit_of
from iogate.gateway.auth import Principal, principal_of
from iogate.gateway.deps import orchestrator_of, request_deadline, settings_of
from iogate.gateway.responses import (
    RESULT_STATUSES,
    OperationList,
    OperationResult,
    ORJSONResponse,
    declared,
    problem,
    result_response,
)
from iogate.gateway.settings import Settings
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.orchestrator.operations import (
    OperationRegistry,
    execute_named_operation,
    load_operations,
    registry_of,
)

__all__ = ["operations_of", "router"]

router = APIRouter(tags=["operations"])

# The listing names operations that ``POST /operations/{name}`` runs: an
# OpenAPI link, so clients and stateful testers (schemathesis) can follow it.
_LIST_RESPONSES = declared(OperationList, problem=(401, 500))
_LIST_RESPONSES[200]["links"] = {
    "RunOperation": {
        "operationRef": "#/paths/~1operations~1{name}/post",
        "parameters": {"name": "$response.body#/operations/0/name"},
        "description": "Run the first operation listed (each entry's `name` works the same)",
    }
}


def operations_of(
    orchestrator: Annotated[AsyncOperationOrchestrator, Depends(orchestrator_of)],
    settings: Annotated[Settings, Depends(settings_of)],
) -> OperationRegistry:
    """The running app's operations, loaded from the settings on first use."""
    load_operations(orchestrator, settings.operations)
    return registry_of(orchestrator)


@router.get(
    "/operations",
    summary="List the named operations and their parameters",
    responses=_LIST_RESPONSES,
)
async def list_operations(
    registry: Annotated[OperationRegistry, Depends(operations_of)],
    principal: Annotated[Principal, Depends(principal_of)],
) -> Response:
    return ORJSONResponse({"operations": [op.describe() for op in registry.all()]})


@router.post(
    "/operations/{name}",
    summary="Run a named operation",
    responses=declared(
        OperationResult, result=RESULT_STATUSES, problem=(400, 401, 403, 404, 413, 422, 500)
    ),
)
async def run_operation(
    request: Request,
    name: Annotated[str, Path(examples=["get_user"])],
    registry: Annotated[OperationRegistry, Depends(operations_of)],
    orchestrator: Annotated[AsyncOperationOrchestrator, Depends(orchestrator_of)],
    deadline: Annotated[Deadline, Depends(request_deadline)],
    principal: Annotated[Principal, Depends(principal_of)],
    params: Annotated[dict[str, Any] | None, Body(examples=[{"id": 42}])] = None,
) -> Response:
    audit = audit_of(request)
    audit.touch(f"ops:{name}", "operation")
    principal.require(f"ops:{name}")
    op = registry.get(name)
    if op is None:
        return problem(404, "Unknown operation", f"no operation named {name!r}")
    if op.database is not None or op.api is not None:
        audit.touch(f"db:{op.database}" if op.database else f"api:{op.api}", op.kind)
    result = await execute_named_operation(orchestrator, name, params or {}, deadline=deadline)
    audit.error_type = result.error_type
    return result_response(result, kind="api" if op.kind == "api" else "database")
