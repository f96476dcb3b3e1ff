"""What route modules need from the running app: dependencies, ``DirectRoute``.

``orchestrator_of``, ``settings_of`` and ``request_deadline`` are plain
functions of the request: call them directly, or declare them with
``Depends``. Declared on an ordinary ``APIRoute``, FastAPI runs each sync
dependency in its thread pool (a thread hop per dependency per request);
routers whose ``route_class`` is ``DirectRoute`` call them inline instead.

``DirectRoute`` is the route class of the single-operation endpoints, where
the gateway's own work per request is what limits its throughput. FastAPI
still reads the endpoint's signature for the OpenAPI document (the body
model, the bearer scheme of ``principal_of``), but a request skips FastAPI's
generic handler: its telemetry hooks, the dependency solver, content-type
parsing, ``json.loads`` followed by a second validation pass, and return-value
serialisation. Profiling ``POST /database/execute`` under wrk showed that
machinery, and the thread hops, costing several times the query itself
(docs/benchmarks.md, "Gateway"). ``DirectDispatch``, a middleware, goes one
step further and hands requests for those routes over before FastAPI's router.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from iogate.core.deadline import Deadline
from iogate.gateway.settings import Settings
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.resilience.deadline_headers import DEADLINE_HEADERS, ClientDeadline, parse_timeout

__all__ = [
    "DEADLINE_SCOPE_KEY",
    "DirectDispatch",
    "DirectRoute",
    "orchestrator_of",
    "request_deadline",
    "settings_of",
]


def orchestrator_of(request: Request) -> AsyncOperationOrchestrator:
    orchestrator: AsyncOperationOrchestrator = request.app.state.orchestrator
    return orchestrator


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DEADLINE_SCOPE_KEY = "iogate.deadline"


# The deadline headers as ASGI names them (lower-case bytes).
_DEADLINE_NAMES = frozenset(name.encode() for name in DEADLINE_HEADERS)


def request_deadline(request: Request) -> Deadline:
    """One deadline per request, kept in the scope.

    ``[gateway] request_timeout``, or less when the client sends its own
    deadline in ``Request-Timeout`` (seconds) or ``grpc-timeout`` (gRPC's
    form): the smaller wins, so a client can shorten the request but never
    lengthen it, and an absurdly large value is simply capped. A malformed
    or negative value is a 400 naming the header. Calls to upstream APIs made
    for the request forward what is left in the forms the client used.
    """
    deadline: Deadline | None = request.scope.get(DEADLINE_SCOPE_KEY)
    if deadline is None:
        deadline = _deadline_of(request.scope, settings_of(request).gateway.request_timeout)
        request.scope[DEADLINE_SCOPE_KEY] = deadline
    return deadline


def _deadline_of(scope: Scope, request_timeout: float) -> Deadline:
    raw = scope["headers"]
    # Most requests carry neither header: one lookup per header, in C.
    if _DEADLINE_NAMES.isdisjoint(dict(raw)):
        return Deadline(request_timeout)
    budget = request_timeout
    forms: list[str] = []
    for raw_name, raw_value in raw:
        # ASGI header names are lower-case bytes.
        if raw_name not in _DEADLINE_NAMES:
            continue
        name = DEADLINE_HEADERS[raw_name.decode()]
        if name in forms:
            raise HTTPException(400, f"{name} may be given only once")
        try:
            seconds = parse_timeout(name, raw_value.decode("latin-1"))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        forms.append(name)
        budget = min(budget, seconds)
    if not forms:
        return Deadline(budget)
    return ClientDeadline(budget, headers=tuple(forms))


# -- DirectRoute -------------------------------------------------------------------

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_LEARN_SCOPE_KEY = "iogate.direct_dispatch.learn"


@dataclass(frozen=True, slots=True)
class _Dependency:
    name: str
    call: Callable[[Request], Any]
    is_async: bool


class DirectRoute(APIRoute):
    """An ``APIRoute`` whose requests bypass FastAPI's generic request handler.

    It applies to an ``async def`` endpoint returning a ``Response`` whose
    parameters are at most: the ``Request``, one JSON body that is a pydantic
    model, and dependencies that take nothing but the request (sync or async,
    no ``yield``, no sub-dependencies). Each dependency is called in the
    order declared -- before the body is validated, as FastAPI does, so a
    missing key is a 401 even when the body is invalid too -- and the body is
    validated once, straight from bytes (``model_validate_json``). An invalid
    body raises ``RequestValidationError`` with FastAPI's ``("body", ...)``
    locations, so the app's handler answers as it does for any route.

    ``handle`` then runs that handler itself, without FastAPI's per-request
    wrapper (two ``AsyncExitStack``s for ``yield`` dependencies, which a direct
    route has none of, and a second exception-handling layer: an exception
    reaches the app's ``ExceptionMiddleware`` and the same handlers instead).

    A route of any other shape falls back to FastAPI's handler: never wrong,
    only slower. Not supported, so never use it with: dependencies or
    ``max_body_size`` added by ``include_router(...)`` or
    ``FastAPI(dependencies=...)``, and dependency overrides.
    """

    _direct: Handler | None = None

    def get_route_handler(self) -> Handler:
        self._direct = self._direct_handler()
        return self._direct if self._direct is not None else super().get_route_handler()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self._direct
        if direct is None or scope["method"] not in (self.methods or ()):
            await super().handle(scope, receive, send)
            return
        learn = scope.pop(_LEARN_SCOPE_KEY, None)
        if learn is not None and not self.param_convertors:
            learn(self)  # a path without parameters always routes here: DirectDispatch
        response = await direct(Request(scope, receive, send))
        await response(scope, receive, send)

    def _direct_handler(self) -> Handler | None:
        dependant = self.dependant
        endpoint = dependant.call
        if (
            endpoint is None
            or not inspect.iscoroutinefunction(endpoint)
            or self.response_field is not None
            or self.dependencies
            or _has_special_params(dependant)
            or dependant.concurrency is not None
            or len(dependant.body_params) > 1
            or (dependant.body_params and self._embed_body_fields)
        ):
            return None
        model: type[BaseModel] | None = None
        body_name = ""
        if dependant.body_params:
            field = dependant.body_params[0]
            annotation = field.field_info.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return None
            model, body_name = annotation, field.name
        steps: list[_Dependency] = []
        for sub in dependant.dependencies:
            step = _request_only(sub)
            if step is None:
                return None
            steps.append(step)
        return _make_handler(endpoint, dependant.request_param_name, steps, model, body_name)


def _has_special_params(dependant: Any) -> bool:
    return any(
        (
            dependant.path_params,
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
            dependant.websocket_param_name,
            dependant.http_connection_param_name,
        )
    )


def _request_only(sub: Any) -> _Dependency | None:
    """The dependency as a plain call on the request, or None when it is more."""
    call = sub.call
    if (
        call is None
        or sub.name is None
        or sub.request_param_name is None
        or sub.dependencies
        or sub.body_params
        or _has_special_params(sub)
        or sub.concurrency is not None
    ):
        return None
    function = call if inspect.isroutine(call) else getattr(call, "__call__", None)  # noqa: B004
    if function is None or inspect.isgeneratorfunction(function):
        return None
    if inspect.isasyncgenfunction(function):
        return None
    return _Dependency(sub.name, call, inspect.iscoroutinefunction(function))


def _make_handler(
    endpoint: Callable[..., Awaitable[Response]],
    request_name: str | None,
    steps: list[_Dependency],
    model: type[BaseModel] | None,
    body_name: str,
) -> Handler:
    async def handler(request: Request) -> Response:
        values: dict[str, Any] = {}
        if request_name is not None:
            values[request_name] = request
        for step in steps:
            value = step.call(request)
            values[step.name] = await value if step.is_async else value
        if model is not None:
            values[body_name] = await json_body(request, model)
        response = await endpoint(**values)
        if not isinstance(response, Response):
            raise TypeError(
                f"{endpoint.__qualname__} returned {type(response).__name__}: a DirectRoute "
                "endpoint must return a Response"
            )
        return response

    return handler


async def json_body(request: Request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body as ``model``; RequestValidationError (422) otherwise.

    Like FastAPI with ``strict_content_type``: a body that is not declared as
    JSON (``application/json`` or ``application/*+json``) is refused, and an
    empty one is a missing body. Error locations match FastAPI's; a type may
    be worded as pydantic's JSON mode words it (``model_type`` for an array
    where an object belongs, where FastAPI says ``model_attributes_type``).
    """
    raw = await request.body()
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    if not _is_json(request.headers.get("content-type")):
        raise RequestValidationError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ("body",),
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": None,
                }
            ]
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type = content_type.partition(";")[0].strip().lower()
    main, _, sub = media_type.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


# -- DirectDispatch ----------------------------------------------------------------


class DirectDispatch:
    """Pure ASGI middleware: serve DirectRoute requests before FastAPI's router.

    Add it first (innermost of the user middleware), so the body limit, the
    request id and the audit record still wrap what it serves. FastAPI's own
    layers below it -- the exception middleware, the ``AsyncExitStack`` of
    ``yield`` dependencies, the router's walk over every route -- cost more per
    request than the route itself under load (docs/benchmarks.md, "Gateway").

    The first request for a ``(method, path)`` goes through FastAPI as usual;
    when it reaches a ``DirectRoute`` whose path has no parameters, that route
    is remembered for the pair, and later requests for it are handed straight
    to the route's handler (so prefixes, mounts and route order are FastAPI's
    to decide, once). An exception is answered by the app's handler for it, as
    ``ExceptionMiddleware`` would; one with no handler propagates to the
    server-error layer. Paths with parameters and other routes always take the
    usual way.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[tuple[str, str], DirectRoute] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = (scope["method"], scope["path"])
        route = self._routes.get(key)
        if route is None or route._direct is None:

            def learn(found: DirectRoute) -> None:
                self._routes[key] = found

            scope[_LEARN_SCOPE_KEY] = learn
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # as the router would: the audit log names its path
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive, send)
        try:
            response = await route._direct(request)
        except Exception as exc:
            handler = _exception_handler(scope["app"], exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)


def _exception_handler(app: Any, exc: Exception) -> Callable[..., Any] | None:
    """The app's handler for ``exc`` as ``ExceptionMiddleware`` picks it: by the
    status code of an ``HTTPException``, else by the closest class; the
    catch-all ``Exception`` handler is the server-error layer's, not ours."""
    handlers: dict[Any, Callable[..., Any]] = getattr(app, "exception_handlers", {})
    if isinstance(exc, HTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
