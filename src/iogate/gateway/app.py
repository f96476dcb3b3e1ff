"""The gateway's app factory: ``create_app(settings)``.

The lifespan owns the resources: it builds the orchestrator from the
settings, opens what it can (a resource that is down at start-up is reported
by ``/ready`` and retried on first use, not fatal), and closes everything on
shutdown. Routes translate requests into orchestrator calls and Results into
HTTP through ``responses.result_response``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response

from iogate.core.errors import IogateError
from iogate.gateway.audit import AuditMiddleware
from iogate.gateway.auth import OBSERVE, Authenticator, Principal, may_observe, principal_of
from iogate.gateway.browser import (
    HostCheckMiddleware,
    ProblemCORSMiddleware,
    allowed_hosts_for,
    cors_options,
)
from iogate.gateway.deps import DirectDispatch, orchestrator_of
from iogate.gateway.logging import (
    RequestIdMiddleware,
    install_operation_log,
    uninstall_operation_log,
)
from iogate.gateway.middleware import BodyLimitMiddleware
from iogate.gateway.privileges import log_privilege_warnings
from iogate.gateway.responses import ORJSONResponse, declared, problem
from iogate.gateway.routes import ROUTERS
from iogate.gateway.settings import Settings, load_settings
from iogate.metrics import MetricsCollector, StatsRegistry
from iogate.orchestrator import AsyncOperationOrchestrator, create_database_manager

__all__ = ["build_orchestrator", "create_app"]

logger = logging.getLogger("iogate.gateway")

READY_TIMEOUT = 1.0
# /stats and /metrics: no key 401, a key without observe 403.
OBSERVE_RESPONSES = declared(problem=(401, 403, 500))


class Readiness(BaseModel):
    """``/ready``'s body: the status for everyone, the details for an observer."""

    status: str = Field(description="ready or not_ready (also the HTTP status: 200 or 503)")
    down: list[str] | None = Field(
        default=None, description="Resources that are down (observe scope only)"
    )
    resources: dict[str, dict[str, Any]] | None = Field(
        default=None, description="Each resource's check (observe scope only)"
    )


def build_orchestrator(settings: Settings) -> AsyncOperationOrchestrator:
    """Every configured resource registered, none opened yet."""
    orchestrator = AsyncOperationOrchestrator()
    for name, db in settings.databases.items():
        options = db.manager_options(settings.gateway)
        manager = create_database_manager(name, db.type, db.connection_string(), **options)
        orchestrator.add_manager(name, manager)
        if db.read_url is not None:
            reader = create_database_manager(
                name, db.type, db.read_url, **db.manager_options(settings.gateway)
            )
            orchestrator.add_read_manager(name, reader)
    if settings.apis:
        from iogate.backends.http import AsyncAPIManager

        for name, api in settings.apis.items():
            api_manager = AsyncAPIManager(
                api.base_url,
                name=name,
                max_connections=api.max_connections,
                timeout=api.timeout,
                headers=api.headers,
                retry=api.retry.model_dump() if api.retry else None,
                circuit_breaker=api.circuit_breaker.model_dump(exclude_none=True)
                if api.circuit_breaker
                else None,
                rate_limit=api.rate_limit,
                verify_ssl=api.verify_ssl,
                ca_bundle=api.ca_bundle,
            )
            orchestrator.add_api(name, api_manager)
    return orchestrator


async def _open_all(orchestrator: AsyncOperationOrchestrator) -> None:
    async def open_one(name: str, opener: Any) -> None:
        try:
            await opener()
        except IogateError as exc:
            logger.warning("%s is not available at start-up: %s", name, exc)

    await asyncio.gather(
        *(open_one(n, m.initialize_pool) for n, m in orchestrator.databases.items()),
        *(open_one(n, m.initialize_pool) for n, m in orchestrator.read_managers.items()),
        *(open_one(n, m.initialize_session) for n, m in orchestrator.apis.items()),
    )


def create_app(settings: Settings | None = None, *, metrics_dir: str | None = None) -> FastAPI:
    """The gateway app; ``metrics_dir`` enables Prometheus multiprocess mode."""
    settings = settings or load_settings(None)
    started_at = time.time()
    # Fail now, not at start-up, on a type whose backend cannot be loaded.
    for name, db in settings.databases.items():
        create_database_manager(
            name, db.type, db.connection_string(), **db.manager_options(settings.gateway)
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        orchestrator = build_orchestrator(settings)
        app.state.orchestrator = orchestrator
        collector = MetricsCollector(multiprocess_dir=metrics_dir)
        operation_stats = StatsRegistry()
        collector.watch(orchestrator)
        collector.install()
        operation_stats.install()
        install_operation_log()
        app.state.metrics = collector
        app.state.operation_stats = operation_stats
        await _open_all(orchestrator)
        # In the background: a database that does not answer must not hold start-up.
        probe = asyncio.create_task(log_privilege_warnings(settings, orchestrator))
        try:
            yield
        finally:
            probe.cancel()
            uninstall_operation_log()
            operation_stats.uninstall()
            collector.uninstall()
            await orchestrator.close()

    app = FastAPI(
        title="iogate",
        version="0.1.0",
        description="SQL, cache and HTTP API operations behind one safe endpoint.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = Authenticator.from_settings(settings)
    # Added first = innermost: requests for DirectRoute routes skip FastAPI's
    # router, still inside the body limit, the audit record and the request id.
    app.add_middleware(DirectDispatch)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.gateway.max_body_bytes)
    cors = cors_options(settings.gateway)
    if cors is not None:
        app.add_middleware(ProblemCORSMiddleware, **cors)
    # Outside CORS, auth and the body: a foreign Host (DNS rebinding) is
    # refused before anything else runs; inside the audit record.
    allowed_hosts = allowed_hosts_for(settings.gateway)
    if allowed_hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=allowed_hosts)
    app.add_middleware(AuditMiddleware)
    # Added last = outermost: every response carries X-Request-ID.
    app.add_middleware(RequestIdMiddleware)
    _install_error_handlers(app)

    for router in ROUTERS:
        app.include_router(router)

    @app.get(
        "/health",
        tags=["observability"],
        summary="Liveness (no I/O)",
        description="Needs no key; like every route, only under an allowed Host name.",
    )
    async def health() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - started_at, 3)}

    @app.get(
        "/ready",
        tags=["observability"],
        summary="Readiness: pings every resource",
        description=(
            "Needs no key. The status for everyone; which resources are down and "
            "each one's check only for a key with the `observe` scope (or when no "
            "keys are configured). An unknown key is not refused, just not shown more."
        ),
        responses={
            200: {"model": Readiness, "description": "Every resource answers"},
            503: {"model": Readiness, "description": "A resource is down or its circuit is open"},
        },
    )
    async def ready(request: Request) -> Response:
        observer = may_observe(request)
        checks = await orchestrator_of(request).health_check(timeout=READY_TIMEOUT)
        down = sorted(name for name, check in checks.items() if check["status"] != "up")
        body: dict[str, Any] = {"status": "not_ready" if down else "ready"}
        if observer:
            body["down"] = down
            body["resources"] = checks
        return ORJSONResponse(body, status_code=503 if down else 200)

    @app.get(
        "/stats",
        tags=["observability"],
        summary="Per-resource statistics",
        description="Needs a key with the `observe` scope (when keys are configured).",
        responses=OBSERVE_RESPONSES,
    )
    async def stats(
        request: Request, principal: Annotated[Principal, Depends(principal_of)]
    ) -> Response:
        principal.require(OBSERVE)
        body = {
            "uptime_s": round(time.time() - started_at, 3),
            **orchestrator_of(request).get_stats(),
            "operations": request.app.state.operation_stats.snapshot(),
        }
        return ORJSONResponse(body)

    @app.get(
        "/metrics",
        tags=["observability"],
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

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return problem(
            exc.status_code,
            _title(exc.status_code),
            str(exc.detail),
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal Server Error", "an unexpected error occurred")


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def app_from_environment() -> FastAPI:
    """App factory for ``uvicorn --factory`` workers started by ``iogate serve --workers N``.

    The parent process passes the config path in ``IOGATE_CONFIG`` (empty: the
    embedded default), the bind address it was given in ``IOGATE_SERVE_HOST``
    and ``IOGATE_SERVE_PORT`` (command-line flags override the file), and the
    shared metrics directory in ``PROMETHEUS_MULTIPROC_DIR``.
    """
    import os

    settings = load_settings(os.environ.get("IOGATE_CONFIG") or None)
    bind = {
        "host": os.environ.get("IOGATE_SERVE_HOST") or settings.gateway.host,
        "port": int(os.environ.get("IOGATE_SERVE_PORT") or settings.gateway.port),
    }
    settings = settings.model_copy(update={"gateway": settings.gateway.model_copy(update=bind)})
    return create_app(settings, metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None)
