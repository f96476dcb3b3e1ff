"""Named operations over HTTP: ``GET /operations`` and ``POST /operations/{name}``.

The request body is the operation's parameters by name (``{"id": 42}``); a
missing or extra parameter, or a value its declared type cannot read, is a
422 naming it. Operations come from ``[operations.NAME]`` in the config and
from ``@operation`` in Python.

``GET /operations`` shows each parameter's declared type, and
:func:`install_operation_schemas` adds each operation's body schema to the
OpenAPI document (the route is one path for every name, so the schemas are
offered as alternatives of its body, each titled with its operation).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Request
from starlette.responses import Response

from iogate.core.deadline import Deadline
from iogate.core.result import Result
from iogate.gateway.admission import Overloaded, admission_of, admitted, overloaded_response
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
    NamedOperation,
    OperationRegistry,
    execute_named_operation,
    load_operations,
    python_operations,
    registry_of,
    settings_operations,
)
from iogate.resilience.adaptive import Priority

__all__ = ["install_operation_schemas", "operations_of", "router"]

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
        OperationResult, result=RESULT_STATUSES, problem=(400, 401, 403, 404, 413, 422, 500, 503)
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

    async def run() -> Result:
        return await execute_named_operation(orchestrator, name, params or {}, deadline=deadline)

    admission = admission_of(request)
    limiter = admission.limiter(op.database or op.api or "")
    try:
        if limiter is None:
            result = await run()
        else:
            spec = settings_of(request).operations.get(name)
            priority = Priority.INTERACTIVE if spec and spec.interactive else Priority.NORMAL
            result = await admitted(admission, limiter, priority, deadline, run)
    except Overloaded as exc:
        audit.error_type = "overloaded"
        return overloaded_response(exc)
    audit.error_type = result.error_type
    return result_response(result, kind="api" if op.kind == "api" else "database")


# -- OpenAPI: each operation's parameters --------------------------------------------

_RUN_PATH = "/operations/{name}"
_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9._-]")


def install_operation_schemas(app: FastAPI) -> None:
    """Show each named operation's parameters, with their types, in ``app``'s OpenAPI.

    Each operation (``[operations.*]`` in ``app.state.settings`` and every
    ``@operation``) gets a component schema ``OperationParams.NAME``, offered
    in the body of ``POST /operations/{name}`` next to the generic object, so
    the document still accepts what the route accepts.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            settings = getattr(app.state, "settings", None)
            configured = settings_operations(settings.operations) if settings else []
            _add_schemas(document, [*configured, *python_operations.all()])
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]


def _add_schemas(document: dict[str, Any], operations: list[NamedOperation]) -> None:
    try:
        body = document["paths"][_RUN_PATH]["post"]["requestBody"]["content"]["application/json"]
    except KeyError:
        return
    components = document.setdefault("components", {}).setdefault("schemas", {})
    seen: set[str] = set()
    refs = []
    for op in operations:
        if op.name in seen:  # configured names win over @operation ones, as at run time
            continue
        seen.add(op.name)
        key = f"OperationParams.{_SCHEMA_NAME.sub('_', op.name)}"
        while key in components:
            key += "_"
        schema = op.params_schema()
        if op.description:
            schema["description"] = op.description
        components[key] = schema
        refs.append({"$ref": f"#/components/schemas/{key}"})
    if not refs:
        return
    generic = body.get("schema", {})
    alternatives = generic.get("anyOf", [generic])
    body["schema"] = {
        **{k: v for k, v in generic.items() if k != "anyOf"},
        "anyOf": [*refs, *alternatives],
        "description": "The parameters of the operation named in the path "
        "(see each OperationParams schema; GET /operations lists them)",
    }
