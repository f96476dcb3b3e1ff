"""POST /api/execute."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from iogate.core.deadline import Deadline
from iogate.core.result import Result
from iogate.gateway.admission import Overloaded, admission_of, admitted, overloaded_response
from iogate.gateway.audit import audit_of
from iogate.gateway.auth import Principal, principal_of
from iogate.gateway.deps import orchestrator_of, request_deadline
from iogate.gateway.responses import OPERATION_RESPONSES, result_response
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.resilience.adaptive import Priority

__all__ = ["ApiExecuteRequest", "router"]

router = APIRouter(tags=["operations"])


class ApiExecuteRequest(BaseModel):
    """One call to a configured API; the endpoint can never leave its base URL."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "api_name": "external_api",
                    "method": "GET",
                    "endpoint": "/users/42",
                    "params": {"include": "profile"},
                }
            ]
        },
    )

    api_name: str = Field(min_length=1, description="Name of a configured API")
    # A closed set, checked before anything runs: the method labels metrics.
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    endpoint: str = Field(description="Path relative to the API's base URL, e.g. /users/1")
    data: Any = Field(default=None, description="JSON body")
    params: dict[str, Any] | None = Field(default=None, description="Query parameters")
    headers: dict[str, str] | None = Field(
        default=None, description="Extra request headers (e.g. Idempotency-Key)"
    )


@router.post("/api/execute", summary="Call an external API", responses=OPERATION_RESPONSES)
async def api_execute(
    request: Request,
    body: ApiExecuteRequest,
    orchestrator: Annotated[AsyncOperationOrchestrator, Depends(orchestrator_of)],
    deadline: Annotated[Deadline, Depends(request_deadline)],
    principal: Annotated[Principal, Depends(principal_of)],
) -> Response:
    audit = audit_of(request)
    audit.touch(f"api:{body.api_name}", "api")
    principal.require(f"api:{body.api_name}")

    async def run() -> Result:
        return await orchestrator.execute_api_operation(
            body.api_name,
            body.method,
            body.endpoint,
            body.data,
            body.params,
            headers=body.headers,
            deadline=deadline,
        )

    admission = admission_of(request)  # adaptive concurrency (gateway/admission.py)
    limiter = admission.limiter(body.api_name)
    try:
        if limiter is None:
            result = await run()
        else:
            result = await admitted(admission, limiter, Priority.NORMAL, deadline, run)
    except Overloaded as exc:
        audit.error_type = "overloaded"
        return overloaded_response(exc)
    audit.error_type = result.error_type
    return result_response(result, kind="api")
