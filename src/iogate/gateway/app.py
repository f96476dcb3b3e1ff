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
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from iogate.core.errors import ConfigError, IogateError
from iogate.gateway.audit import AuditMiddleware
from iogate.gateway.auth import Authenticator
from iogate.gateway.browser import (
    HostCheck,
    HostCheckMiddleware,
    ProblemCORSMiddleware,
    allowed_hosts_for,
    cors_options,
)
from iogate.gateway.deps import DirectDispatch
from iogate.gateway.docs import install_docs
from iogate.gateway.jobs_state import GatewayJobs
from iogate.gateway.logging import (
    RequestIdMiddleware,
    install_operation_log,
    uninstall_operation_log,
)
from iogate.gateway.middleware import BodyLimitMiddleware
from iogate.gateway.privileges import log_privilege_warnings
from iogate.gateway.responses import problem
from iogate.gateway.routes import ROUTERS
from iogate.gateway.routes.dashboard import start_history, stop_history
from iogate.gateway.routes.observability import own_stats
from iogate.gateway.routes.operations import install_operation_schemas
from iogate.gateway.settings import (
    Settings,
    config_source,
    load_settings,
    parse_settings,
    read_config_text,
)
from iogate.gateway.shared_state import GatewaySharing, rate_limit_storage
from iogate.metrics import MetricsCollector, StatsRegistry
from iogate.orchestrator import AsyncOperationOrchestrator, create_database_manager

__all__ = ["build_orchestrator", "create_app", "load_checked", "validate_resources"]

logger = logging.getLogger("iogate.gateway")


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
                retry=api.retry_policy(),
                circuit_breaker=api.breaker_config(),
                rate_limit=api.rate_limit,
                # With [gateway] shared_state: counted across every gateway.
                rate_limit_storage=rate_limit_storage(settings.gateway.shared_state),
                verify_ssl=api.verify_ssl,
                ca_bundle=api.ca_bundle,
            )
            orchestrator.add_api(name, api_manager)
    return orchestrator


def validate_resources(settings: Settings) -> None:
    """Build every manager the settings describe, without opening any.

    What the settings' own validation cannot see (a database type whose
    driver is missing, a MySQL URL option, an API header or CA bundle the
    manager refuses) fails here, at load time, as a ``ConfigError`` naming
    the resource's key path: ``databases.main: ...``, ``apis.crm: ...``.
    """
    from iogate.backends.http import AsyncAPIManager

    for name, db in settings.databases.items():
        try:
            for url in (db.connection_string(), db.read_url):
                if url is not None:
                    create_database_manager(
                        name, db.type, url, **db.manager_options(settings.gateway)
                    )
        except (ConfigError, ValueError, TypeError) as exc:
            raise ConfigError(f"databases.{name}: {exc}") from None
    for name, api in settings.apis.items():
        try:
            AsyncAPIManager(
                api.base_url,
                name=name,
                max_connections=api.max_connections,
                timeout=api.timeout,
                headers=api.headers,
                rate_limit=api.rate_limit,
                verify_ssl=api.verify_ssl,
                ca_bundle=api.ca_bundle,
            )
        except (ConfigError, ValueError, TypeError, OSError) as exc:
            raise ConfigError(f"apis.{name}: {exc}") from None


def load_checked(path: str | Path | None, *, text: str | None = None) -> Settings:
    """``load_settings`` plus :func:`validate_resources`: every config error at load time.

    ``text``: the config's text already read (errors still name ``path``).
    """
    source = config_source(path)
    if text is None:
        text = read_config_text(path)
    settings = parse_settings(text, source=source)
    try:
        validate_resources(settings)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return settings


# Apps whose lifespan runs: during a reload two generations overlap, and the
# operation log's hook (one module-level function) must outlive the old one.
_operation_log_users: weakref.WeakSet[FastAPI] = weakref.WeakSet()


# How long start-up waits for resources to open (see _open_all).
STARTUP_OPEN_WAIT = 1.0


async def _open_all(
    orchestrator: AsyncOperationOrchestrator, within: float = STARTUP_OPEN_WAIT
) -> None:
    """Open every resource, concurrently, waiting at most ``within`` seconds.

    A resource that does not answer (a partition, a server still starting)
    must not hold start-up for its connect timeout: what has not opened by
    then is left alone (its opening cancelled) and opened on first use,
    inside that request's deadline; ``/ready`` reports it down meanwhile.
    """

    async def open_one(name: str, opener: Any) -> None:
        try:
            await opener()
        except IogateError as exc:
            logger.warning("%s is not available at start-up: %s", name, exc)

    readers = orchestrator.read_managers.items()
    openers: list[tuple[str, Any]] = [
        *((n, m.initialize_pool) for n, m in orchestrator.databases.items()),
        *((f"{n} (read_url)", m.initialize_pool) for n, m in readers),
        *((n, m.initialize_session) for n, m in orchestrator.apis.items()),
    ]
    openings = {asyncio.ensure_future(open_one(n, opener)): n for n, opener in openers}
    if not openings:
        return
    _, pending = await asyncio.wait(openings, timeout=within)
    for task in pending:
        logger.warning(
            "%s did not answer within %gs at start-up; it will be opened on first use",
            openings[task],
            within,
        )
        task.cancel()
    if pending:  # cancelled openings end at once; never let one hold start-up
        await asyncio.wait(pending, timeout=1.0)


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
        _operation_log_users.add(app)
        install_operation_log()
        app.state.metrics = collector
        app.state.operation_stats = operation_stats
        await _open_all(orchestrator)
        # In the background: a database that does not answer must not hold start-up.
        probe = asyncio.create_task(log_privilege_warnings(settings, orchestrator))
        # Rate limits, invalidations, breaker openings and /stats across processes.
        sharing = GatewaySharing(
            settings.gateway.shared_state,
            lambda: own_stats(app),
            metrics_dir=metrics_dir,
        )
        await sharing.start(orchestrator)
        app.state.sharing = sharing
        # The dashboard's last minutes, of every worker.
        history = start_history(app, started_at, stats=sharing.history_sample)
        jobs = GatewayJobs(
            settings.jobs, orchestrator, settings.gateway.max_params, settings.operations
        )
        app.state.jobs = jobs
        jobs.start_in_background()
        try:
            yield
        finally:
            probe.cancel()
            await jobs.aclose()
            await stop_history(history)
            await sharing.aclose()
            _operation_log_users.discard(app)
            if not _operation_log_users:  # a reloaded generation may still log
                uninstall_operation_log()
            operation_stats.uninstall()
            collector.uninstall()
            await orchestrator.close()

    telemetry = None
    if settings.tracing.enabled:  # OpenTelemetry is imported only then
        from iogate.tracing import enable_for_gateway

        telemetry = enable_for_gateway(settings.tracing)
    app = FastAPI(
        title="iogate",
        version="0.1.0",
        description="SQL, cache and HTTP API operations behind one safe endpoint.",
        lifespan=lifespan,
        telemetry=telemetry,  # type: ignore[arg-type]
        docs_url=None,  # install_docs: Swagger UI and ReDoc served offline
        redoc_url=None,
    )
    install_docs(app)
    install_operation_schemas(app)
    app.state.settings = settings
    app.state.started_at = started_at
    app.state.authenticator = Authenticator.from_settings(settings)
    # Added first = innermost: requests for DirectRoute routes skip FastAPI's
    # router, still inside the body limit, the audit record and the request id.
    app.add_middleware(DirectDispatch)
    # Outside CORS, auth and the body: a foreign Host (DNS rebinding) is
    # refused before anything else runs; inside the audit record. Without
    # CORS (the default) the body-limit layer checks it in its header pass.
    allowed_hosts = allowed_hosts_for(settings.gateway)
    hosts = HostCheck(allowed_hosts) if allowed_hosts is not None else None
    cors = cors_options(settings.gateway)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.gateway.max_body_bytes,
        hosts=hosts if cors is None else None,
        path_limits={"/batch/jobs": settings.jobs.max_body_bytes},
    )
    if cors is not None:
        app.add_middleware(ProblemCORSMiddleware, **cors)
        if hosts is not None:
            app.add_middleware(HostCheckMiddleware, check=hosts)
    app.add_middleware(AuditMiddleware)
    # Added last = outermost: every response carries X-Request-ID.
    app.add_middleware(RequestIdMiddleware)
    _install_error_handlers(app)

    for router in ROUTERS:
        app.include_router(router)

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
    embedded default) and, in ``IOGATE_CONFIG_SNAPSHOT``, a private copy of
    the text it last validated: a worker started later (a replacement after
    a crash, or during a SIGHUP) reads that copy, never a config file being
    edited, so a bad edit cannot stop a worker from starting. The bind
    address it was given is in ``IOGATE_SERVE_HOST`` and
    ``IOGATE_SERVE_PORT`` (command-line flags override the file), its
    ``--log-level`` in ``IOGATE_SERVE_LOG_LEVEL`` (a spawned worker starts with
    no logging set up), and the shared metrics directory in
    ``PROMETHEUS_MULTIPROC_DIR``.
    """
    import os

    path = os.environ.get("IOGATE_CONFIG") or None
    snapshot = os.environ.get("IOGATE_CONFIG_SNAPSHOT")
    settings = (
        parse_settings(read_config_text(snapshot), source=config_source(path))
        if snapshot
        else load_settings(path)
    )
    log_level = os.environ.get("IOGATE_SERVE_LOG_LEVEL")
    if log_level:
        from iogate.gateway.logging import configure_logging, secrets_of

        configure_logging(level=log_level, secrets=secrets_of(settings), background=True)
    bind = {
        "host": os.environ.get("IOGATE_SERVE_HOST") or settings.gateway.host,
        "port": int(os.environ.get("IOGATE_SERVE_PORT") or settings.gateway.port),
    }
    settings = settings.model_copy(update={"gateway": settings.gateway.model_copy(update=bind)})
    return create_app(settings, metrics_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None)
