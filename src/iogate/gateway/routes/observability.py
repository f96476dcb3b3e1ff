"""``/health``, ``/ready``, ``/stats`` and ``/metrics``: what operators and scrapers read.

``/health`` and ``/ready`` need no key (``/ready`` shows details only to an
``observe`` key); ``/stats`` and ``/metrics`` need the ``observe`` scope when
keys are configured. With several workers, ``/stats`` answers with every
worker's aggregate (``gateway.shared_state``).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, Field
from starlette.responses import PlainTextResponse, Response

from iogate.gateway.admission import admission_snapshot
from iogate.gateway.auth import OBSERVE, Principal, may_observe, principal_of
from iogate.gateway.deps import orchestrator_of, settings_of
from iogate.gateway.responses import ORJSONResponse, declared
from iogate.gateway.shared_state import GatewaySharing
from iogate.metrics import MetricsCollector

__all__ = ["READY_TIMEOUT", "Readiness", "own_stats", "router"]

READY_TIMEOUT = 1.0
# /stats and /metrics: no key 401, a key without observe 403.
OBSERVE_RESPONSES = declared(problem=(401, 403, 500))


class Readiness(BaseModel):
    """``/ready``'s body: the status for everyone, the details for an observer."""

    status: str = Field(description="ready or not_ready (also the HTTP status: 200 or 503)")
    down: list[str] | None = Field(
        default=None,
        description="Resources the gateway needs that are down (observe scope only)",
    )
    degraded: list[str] | None = Field(
        default=None,
        description=(
            "APIs that are down or whose circuit is open or half-open, which do not "
            "fail readiness unless [gateway] ready_includes_apis (observe scope only)"
        ),
    )
    resources: dict[str, dict[str, Any]] | None = Field(
        default=None, description="Each resource's check (observe scope only)"
    )


router = APIRouter(tags=["observability"])


@router.get(
    "/health",
    summary="Liveness (no I/O)",
    description="Needs no key; like every route, only under an allowed Host name.",
)
async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", "uptime_s": round(time.time() - request.app.state.started_at, 3)}


@router.get(
    "/ready",
    summary="Readiness: pings every resource",
    description=(
        "Needs no key. 503 when a database or cache does not answer; an API "
        "that is down or whose circuit is open is reported as `degraded` and "
        "keeps the gateway ready, unless `[gateway] ready_includes_apis = true`. "
        "The status for everyone; what is down or degraded and each resource's "
        "check only for a key with the `observe` scope (or when no keys are "
        "configured). An unknown key is not refused, just not shown more."
    ),
    responses={
        200: {"model": Readiness, "description": "Every resource the gateway needs answers"},
        503: {"model": Readiness, "description": "A database or cache is down"},
    },
)
async def ready(request: Request) -> Response:
    observer = may_observe(request)
    report = await orchestrator_of(request).readiness(
        READY_TIMEOUT, include_apis=settings_of(request).gateway.ready_includes_apis
    )
    body: dict[str, Any] = {"status": "ready" if report["ready"] else "not_ready"}
    if observer:
        body["down"] = report["down"]
        body["degraded"] = report["degraded"]
        body["resources"] = report["resources"]
    return ORJSONResponse(body, status_code=200 if report["ready"] else 503)


@router.get(
    "/stats",
    summary="Per-resource statistics",
    description="Needs a key with the `observe` scope (when keys are configured).",
    responses=OBSERVE_RESPONSES,
)
async def stats(
    request: Request, principal: Annotated[Principal, Depends(principal_of)]
) -> Response:
    principal.require(OBSERVE)
    body = {
        "uptime_s": round(time.time() - request.app.state.started_at, 3),
        **orchestrator_of(request).get_stats(),
        "operations": request.app.state.operation_stats.snapshot(),
        "admission": admission_snapshot(request),  # adaptive concurrency, per resource
    }
    sharing: GatewaySharing | None = getattr(request.app.state, "sharing", None)
    if sharing is not None:  # every worker's aggregate, and a `workers` list
        body = await sharing.stats_body(body)
    return ORJSONResponse(body)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    description=(
        "Needs a key with the `observe` scope (when keys are configured); "
        "Prometheus sends it with `authorization` in its scrape config."
    ),
    responses={200: {"content": {"application/openmetrics-text": {}}}, **OBSERVE_RESPONSES},
)
async def metrics(
    request: Request, principal: Annotated[Principal, Depends(principal_of)]
) -> Response:
    principal.require(OBSERVE)
    collector: MetricsCollector = request.app.state.metrics
    body, content_type = collector.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


def own_stats(app: FastAPI) -> dict[str, Any]:
    """This process's ``/stats`` body outside a request (what other workers are shown)."""
    admission = getattr(app.state, "admission", None)  # built on the first request
    return {
        "uptime_s": round(time.time() - app.state.started_at, 3),
        **app.state.orchestrator.get_stats(),
        "operations": app.state.operation_stats.snapshot(),
        "admission": admission.snapshot() if admission is not None else {},
    }
