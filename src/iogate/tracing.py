"""OpenTelemetry tracing for iogate (``pip install iogate[otel]``).

``enable_tracing()`` installs a tracer in :mod:`iogate.core.events`; from
then on every operation is a span, current while the operation runs:

- a SQL, Redis or memory operation (``AsyncDatabaseManager.execute_query``,
  a statement in ``transaction()``): a CLIENT span named ``"{db.operation.name}
  {target}"`` with ``db.system`` (and its newer name ``db.system.name``),
  ``db.operation.name`` (the statement's first keyword, or the key-value
  command), ``db.namespace``, ``server.address``, ``server.port``,
  ``db.response.returned_rows``, and ``error.type`` (iogate's error type)
  with an ERROR status when it failed;
- an API call (``AsyncAPIManager.request``): a CLIENT span named after the
  method with ``http.request.method``, ``server.address``, ``server.port``,
  ``http.response.status_code`` and ``error.type``; the request carries the
  span as W3C ``traceparent`` (and ``tracestate``; never ``baggage``, which a
  gateway client could fill), so the upstream's spans join the caller's trace;
- a batch (``execute_batch``) and a named operation: an INTERNAL span whose
  children are the operations they run.

Statement text (``db.query.text``) and the API's URL (``url.full``, query
string included) are recorded only with ``record_statements=True``;
parameter values (``db.query.parameter.<n>``) only with
``record_parameters=True``. iogate's own attributes are ``iogate.resource``,
``iogate.attempts`` and, on batches, ``iogate.batch.size``,
``iogate.batch.atomic`` and ``iogate.batch.failed``.

The gateway's request span is FastAPI's own (``FastAPI(telemetry=...)``): a
SERVER span that continues an incoming ``traceparent``, so iogate's spans are
its children. ``gateway_telemetry()`` gives the options ``create_app`` passes.

This module imports OpenTelemetry at import time; nothing else in iogate
imports this module unless tracing is switched on (``[tracing] enabled`` or
a call to ``enable_tracing``), so without it iogate neither imports nor pays
for OpenTelemetry.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any, Literal
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from iogate.core import events
from iogate.core.resource import Kind, Resource
from iogate.core.result import Result

__all__ = [
    "IogateTracer",
    "disable_tracing",
    "enable_for_gateway",
    "enable_tracing",
    "gateway_telemetry",
    "provider_from_settings",
    "sql_operation_name",
]

INSTRUMENTATION_NAME = "iogate"
_SQL_BACKENDS = frozenset({"postgresql", "sqlite", "mysql"})
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "redis": 6379}
_OPERATION_NAMES: dict[str, str | None] = {}
_OPERATION_NAMES_MAX = 4096
_TRACE_CONTEXT = TraceContextTextMapPropagator()


def enable_tracing(
    tracer_provider: TracerProvider | None = None,
    *,
    record_statements: bool = False,
    record_parameters: bool = False,
) -> IogateTracer:
    """Trace every iogate operation from now on, with ``tracer_provider``'s
    tracer (the global provider when None). Returns the installed tracer;
    calling it again replaces it."""
    provider = tracer_provider or trace.get_tracer_provider()
    tracer = IogateTracer(
        provider.get_tracer(INSTRUMENTATION_NAME),
        record_statements=record_statements,
        record_parameters=record_parameters,
    )
    events.set_tracer(tracer)
    return tracer


def disable_tracing() -> None:
    """No spans from now on (spans already open still end)."""
    events.set_tracer(None)


class IogateTracer:
    """The :class:`iogate.core.events.OperationTracer` of OpenTelemetry."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        record_statements: bool = False,
        record_parameters: bool = False,
    ) -> None:
        self.tracer = tracer
        self.record_statements = record_statements
        self.record_parameters = record_parameters
        # Per manager, what does not change: system, namespace, address, port.
        self._endpoints: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()

    # -- the OperationTracer protocol ---------------------------------------------

    def start(self, kind: str, target: Any, statement: Any = None, params: Any = None) -> Any:
        if kind == "database":
            name, kind_, attributes = self._database(target, statement, params)
        elif kind == "api":
            name, kind_, attributes = self._api(target, statement, params)
        elif kind == "batch":
            name, kind_ = "batch", SpanKind.INTERNAL
            attributes = {"iogate.batch.size": len(target), "iogate.batch.atomic": bool(statement)}
        else:
            name, kind_ = f"operation {target}", SpanKind.INTERNAL
            attributes = {"iogate.operation": str(target)}
        span = self.tracer.start_span(name, kind=kind_, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span))
        return (span, token, kind)

    def finish(
        self,
        span: Any,
        result: Result | list[Result] | None,
        error: BaseException | None = None,
    ) -> None:
        live, token, kind = span
        try:
            if isinstance(result, list):  # a batch: one Result per operation
                failed = sum(1 for r in result if isinstance(r, Result) and not r.success)
                live.set_attribute("iogate.batch.failed", failed)
                if failed:
                    live.set_status(StatusCode.ERROR, f"{failed} operation(s) failed")
            elif result is not None:
                _describe(live, result, rows=kind == "database")
            if error is not None:
                live.set_attribute("error.type", type(error).__qualname__)
                live.set_status(StatusCode.ERROR, type(error).__qualname__)
            live.end()
        finally:
            context.detach(token)

    def inject(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        carrier: dict[str, str] = dict(headers) if headers else {}
        # A caller's own trace headers give way to the current span's.
        for name in [n for n in carrier if n.lower() in ("traceparent", "tracestate")]:
            del carrier[name]
        # W3C trace context only: not the global propagator, whose baggage
        # would hand what a gateway client put in its `baggage` header to
        # every upstream API.
        _TRACE_CONTEXT.inject(carrier)
        return carrier

    def route(self, method: str, template: str) -> None:
        # FastAPI names its request span when its router matches; requests that
        # DirectDispatch hands straight to their route never pass the router.
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("http.route", template)
            span.update_name(f"{method} {template}")

    # -- attributes -------------------------------------------------------------------

    def _endpoint(self, manager: Any) -> dict[str, Any]:
        try:
            return self._endpoints[manager]
        except (KeyError, TypeError):
            pass
        try:
            endpoint = _endpoint_of(manager)
        except AttributeError:  # not a Resource (a hand-made Transaction's own span)
            endpoint = {}
        try:
            self._endpoints[manager] = endpoint
        except TypeError:  # not weak-referenceable: computed each time
            pass
        return endpoint

    def _database(
        self, manager: Any, statement: Any, params: Any
    ) -> tuple[str, SpanKind, dict[str, Any]]:
        manager = getattr(manager, "_manager", manager)  # a Transaction's manager
        endpoint = self._endpoint(manager)
        attributes = dict(endpoint)
        attributes["iogate.resource"] = getattr(manager, "name", "")
        system = endpoint["db.system"]
        if system in _SQL_BACKENDS:
            operation = sql_operation_name(statement) if isinstance(statement, str) else None
            if self.record_statements and isinstance(statement, str):
                attributes["db.query.text"] = statement
        else:
            command = params.get("operation") if isinstance(params, Mapping) else None
            operation = command.upper() if isinstance(command, str) else None
        if operation:
            attributes["db.operation.name"] = operation
        if self.record_parameters and params is not None:
            attributes.update(_parameters(params))
        target = endpoint.get("db.namespace") or endpoint.get("server.address") or system
        name = f"{operation} {target}" if operation else str(target)
        return name, SpanKind.CLIENT, attributes

    def _api(
        self, manager: Any, method: Any, endpoint_path: Any
    ) -> tuple[str, SpanKind, dict[str, Any]]:
        endpoint = self._endpoint(manager)
        attributes = dict(endpoint)
        verb = method.upper() if isinstance(method, str) else "_OTHER"
        attributes["http.request.method"] = verb
        attributes["iogate.resource"] = getattr(manager, "name", "")
        if self.record_statements and isinstance(endpoint_path, str):
            base = getattr(manager, "base", None)
            if base is not None:
                attributes["url.full"] = f"{base}/{endpoint_path.lstrip('/')}"
        return verb, SpanKind.CLIENT, attributes


def _describe(span: Span, result: Result, *, rows: bool) -> None:
    attributes: dict[str, Any] = {"iogate.attempts": result.attempts}
    if result.status_code is not None:
        attributes["http.response.status_code"] = result.status_code
    if rows and result.success and isinstance(result.data, list):
        attributes["db.response.returned_rows"] = len(result.data)
    if not result.success:
        attributes["error.type"] = result.error_type or "_OTHER"
        # The error text never holds a secret (a Result guarantees it), but it
        # may quote the caller's data: the type is enough to find it by.
        span.set_status(StatusCode.ERROR, result.error_type or None)
    span.set_attributes(attributes)


def _parameters(params: Any) -> dict[str, Any]:
    if isinstance(params, Mapping):
        items = list(params.items())
    elif isinstance(params, Sequence) and not isinstance(params, str | bytes):
        items = [(str(i + 1), v) for i, v in enumerate(params)]
    else:
        return {}
    return {f"db.query.parameter.{key}": str(value) for key, value in items}


def _endpoint_of(manager: Resource) -> dict[str, Any]:
    """db.system, db.namespace, server.address and server.port of a manager,
    read from its redacted ``target`` (pinned by tests/integration/test_tracing.py)."""
    backend = manager.backend
    target = manager.target
    if manager.kind is Kind.API:
        parts = urlsplit(target)
        return {
            "server.address": parts.hostname,
            "server.port": parts.port or (443 if parts.scheme == "https" else 80),
        }
    attributes: dict[str, Any] = {"db.system": backend, "db.system.name": backend}
    if backend == "sqlite":
        attributes["db.namespace"] = target
        return attributes
    if "://" not in target:
        return attributes
    try:
        parts = urlsplit(target)
        host, port = parts.hostname, parts.port
    except ValueError:
        return attributes
    if host:
        attributes["server.address"] = host
        attributes["server.port"] = port or _DEFAULT_PORTS.get(backend, 0)
    namespace = parts.path.lstrip("/")
    if namespace:
        attributes["db.namespace"] = namespace
    elif backend == "redis":
        attributes["db.namespace"] = "0"
    return attributes


def sql_operation_name(statement: str) -> str | None:
    """The statement's first keyword, upper-cased (``SELECT``, ``WITH``, ...).

    What the semantic conventions ask of a name parsed from the text ("the
    first operation name found"): leading whitespace and comments are
    skipped; None when the text does not start with a word. A label for the
    span, never a decision: nothing iogate allows or refuses rests on it.
    """
    cached = _OPERATION_NAMES.get(statement, "")
    if cached != "":
        return cached
    name = _first_keyword(statement)
    if len(_OPERATION_NAMES) < _OPERATION_NAMES_MAX:
        _OPERATION_NAMES[statement] = name
    return name


def _first_keyword(text: str) -> str | None:
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            break
    start = i
    while i < n and (text[i].isalpha() or text[i] == "_"):
        i += 1
    word = text[start:i]
    return word.upper() if word else None


# -- the gateway ------------------------------------------------------------------


_gateway_providers: dict[tuple[Any, ...], TracerProvider] = {}


def enable_for_gateway(settings: Any) -> dict[str, Any]:
    """``[tracing]`` (a ``TracingSettings``) switched on: the provider built,
    iogate's spans enabled, and the ``FastAPI(telemetry=...)`` options.

    A config reload builds a new app; the same exporter settings keep the
    same provider (one exporter thread, one open file), and the SDK flushes
    every provider at exit.
    """
    key = (settings.exporter, settings.service_name, settings.file, settings.otlp_endpoint)
    provider = _gateway_providers.get(key)
    if provider is None:
        provider = _gateway_providers[key] = provider_from_settings(
            exporter=settings.exporter,
            service_name=settings.service_name,
            file=settings.file,
            otlp_endpoint=settings.otlp_endpoint,
        )
    enable_tracing(
        provider,
        record_statements=settings.record_statements,
        record_parameters=settings.record_parameters,
    )
    return gateway_telemetry(provider)


def gateway_telemetry(provider: TracerProvider) -> dict[str, Any]:
    """``FastAPI(telemetry=...)``: request spans from ``provider``, and none of
    FastAPI's per-dependency spans, metrics or logs (iogate has its own)."""
    return {
        "tracer_provider": provider,
        "tracing": True,
        "operation_spans": False,
        "metrics": False,
        "logs": False,
    }


Exporter = Literal["otlp", "console", "file"]


def provider_from_settings(
    *,
    exporter: Exporter,
    service_name: str,
    file: str | None = None,
    otlp_endpoint: str | None = None,
    stream: IO[str] | None = None,
) -> TracerProvider:
    """An SDK ``TracerProvider`` exporting in batches to ``exporter``.

    ``otlp``: OTLP over HTTP (``opentelemetry-exporter-otlp-proto-http``) to
    ``otlp_endpoint`` or the standard ``OTEL_EXPORTER_OTLP_*`` variables;
    ``console``: one JSON object per span on ``stream`` (stdout); ``file``:
    the same, appended to ``file``. The SDK flushes at exit.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    span_exporter: SpanExporter
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = (
            OTLPSpanExporter(endpoint=otlp_endpoint) if otlp_endpoint else OTLPSpanExporter()
        )
    else:
        out = stream
        if exporter == "file":
            if not file:
                raise ValueError('tracing.file is required with exporter = "file"')
            out = open(file, "a", encoding="utf-8")  # noqa: SIM115 -- lives as long as the provider
        span_exporter = ConsoleSpanExporter(
            out=out or sys.stdout,
            formatter=lambda span: span.to_json(indent=None) + "\n",
        )
    provider = SdkTracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider
