"""The one place library outcomes become HTTP: status mapping and problem+json.

The models at the end describe those bodies for the OpenAPI document only
(``responses=`` on each route); handlers build the bytes directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from iogate.core.result import Result

__all__ = [
    "AUTH_RESPONSES",
    "OPERATION_RESPONSES",
    "BatchResult",
    "ORJSONResponse",
    "OperationList",
    "OperationResult",
    "Problem",
    "declared",
    "encodable",
    "problem",
    "result_response",
    "status_for",
]

# error_type -> HTTP status (DESIGN §5). connection_error depends on the side:
# a database we cannot reach is our outage (503), an upstream API's is 502.
_STATUS = {
    "invalid_request": 422,
    "result_too_large": 422,
    "query_error": 400,
    "read_only": 403,
    "forbidden": 403,
    "forbidden_statement": 403,
    "not_found": 404,
    "rate_limited": 429,
    "http_error": 502,
    "unknown_outcome": 502,  # overridden for databases below
    "pool_exhausted": 503,
    "circuit_open": 503,
    "closed": 503,
    "timeout": 504,
    "dependency_failed": 424,
}


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_NON_STR_KEYS)


def status_for(result: Result, *, kind: str = "database") -> int:
    if result.success:
        return 200
    error_type = result.error_type or "internal_error"
    if error_type == "connection_error":
        return 502 if kind == "api" else 503
    return _STATUS.get(error_type, 500)


def encodable(result: Result, *, envelope: int = 1) -> Result:
    """``result``, or a failed Result when its data cannot be JSON (nested
    deeper than orjson's 254 levels, say a jsonb value the database built,
    counting the ``envelope`` levels the response wraps it in): the client
    gets a 400 naming why, never a 500."""
    wrapped = result.data
    for _ in range(envelope):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:
        return Result.fail(
            f"the result cannot be sent as JSON: {exc}",
            "query_error",
            resource=result.resource,
            operation=result.operation,
        )
    return result


def result_response(result: Result, *, kind: str = "database") -> ORJSONResponse:
    status = status_for(result, kind=kind)
    headers = {}
    if status in (429, 503):
        retry_after = result.retry_after if result.retry_after is not None else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    try:
        return ORJSONResponse(result.to_dict(), status_code=status, headers=headers)
    except orjson.JSONEncodeError:  # data orjson cannot write: a 400 naming why
        return result_response(encodable(result), kind=kind)


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """An RFC 9457 problem document."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return Response(
        orjson.dumps(body, default=str),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


# -- OpenAPI: what the routes really answer ------------------------------------------


class OperationResult(BaseModel):
    """A ``Result`` as served: the outcome of one operation, failed or not."""

    model_config = ConfigDict(extra="forbid")

    success: bool
    data: Any = Field(description="Rows, a value, or the upstream's body")
    error: str | None = Field(description="What went wrong (never a secret)")
    error_type: str | None = Field(description="Stable code: query_error, timeout, ...")
    resource: str | None
    operation: str | None
    duration_ms: float
    attempts: int
    rows_affected: int | None = Field(
        description="Rows written by INSERT, UPDATE, DELETE (with or without RETURNING); "
        "null for reads and DDL"
    )
    last_insert_id: int | None = Field(
        description="The id the database generated for an INSERT that returns no rows "
        "(SQLite rowid, MariaDB AUTO_INCREMENT); null on PostgreSQL and with RETURNING",
    )
    status_code: int | None = Field(description="The upstream's HTTP status (API calls)")
    truncated: bool = Field(description="More rows than [gateway] max_rows")
    headers: dict[str, str] | None = Field(
        default=None, description="The upstream's response headers (API calls)"
    )


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, str]] | None = Field(
        default=None, description="Each invalid field: loc and msg (422 only)"
    )


class BatchSummary(BaseModel):
    total: int
    succeeded: int
    failed: dict[str, int] = Field(description="Failed operations by error_type")


class BatchResult(BaseModel):
    """One Result per operation, in request order."""

    results: list[OperationResult]
    summary: BatchSummary


class OperationParameter(BaseModel):
    name: str
    required: bool
    type: str | None = Field(
        default=None,
        description="Declared type (str, int, float, decimal, bool, date, time, datetime, "
        "timedelta, bytes, uuid, json); null when undeclared",
    )


class OperationDescription(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    kind: str
    resource: str
    params: list[OperationParameter]
    description: str | None
    cached: bool


class OperationList(BaseModel):
    operations: list[OperationDescription]


# Inline: FastAPI files only application/json models under components.
_PROBLEM_CONTENT = {"application/problem+json": {"schema": Problem.model_json_schema()}}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}
# Every status ``status_for`` can give a failed Result.
RESULT_STATUSES = frozenset({500, *_STATUS.values()})


def declared(
    ok: type[BaseModel] | None = None,
    *,
    result: Iterable[int] = (),
    problem: Iterable[int] = (),
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: its 200 body, the statuses answered with a
    failed Result (JSON), with a problem document, or (the same status from two
    places) with either."""
    result, problem = set(result), set(problem)
    out: dict[int | str, dict[str, Any]] = {}
    if ok is not None:
        out[200] = {"model": ok}
    for status in sorted(result | problem):
        entry: dict[str, Any] = {}
        if status in result:
            entry["model"] = OperationResult
            if status in (429, 503):
                entry["headers"] = _RETRY_AFTER
        if status in problem:
            entry["content"] = dict(_PROBLEM_CONTENT)
        out[status] = entry
    return out


# Refusals any authenticated route may answer before it runs.
AUTH_RESPONSES = declared(problem=(401, 500))
# The single-operation routes: a Result whatever the outcome, or a refusal
# (400: a body that is not even text, from FastAPI's body parsing; 503:
# overloaded, from adaptive concurrency in gateway/admission.py).
OPERATION_RESPONSES = declared(
    OperationResult, result=RESULT_STATUSES, problem=(400, 401, 403, 413, 422, 500, 503)
)
