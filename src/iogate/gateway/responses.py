"""The one place library outcomes become HTTP: status mapping and problem+json."""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.responses import Response

from iogate.core.result import Result

__all__ = ["ORJSONResponse", "problem", "result_response", "status_for"]

# error_type -> HTTP status (DESIGN §5). connection_error depends on the side:
# a database we cannot reach is our outage (503), an upstream API's is 502.
_STATUS = {
    "invalid_request": 422,
    "query_error": 400,
    "read_only": 403,
    "forbidden": 403,
    "not_found": 404,
    "rate_limited": 429,
    "http_error": 502,
    "unknown_outcome": 502,
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


def result_response(result: Result, *, kind: str = "database") -> ORJSONResponse:
    status = status_for(result, kind=kind)
    headers = {}
    if status in (429, 503):
        retry_after = result.retry_after if result.retry_after is not None else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return ORJSONResponse(result.to_dict(), status_code=status, headers=headers)


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
