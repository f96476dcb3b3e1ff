"""The audit log: one JSON record per HTTP request on the ``iogate.audit`` logger.

The access log says that a request happened; the audit log says who did
what to which resource, and how it ended::

    {"logger": "iogate.audit", "request_id": "...", "key": "ci",
     "method": "POST", "path": "/operations/{name}", "resources": ["ops:get_user",
     "db:main"], "kinds": ["operation"], "status": 200, "outcome": "ok",
     "error_type": null, "duration_ms": 3.2}

``AuditMiddleware`` (pure ASGI) puts an ``AuditRecord`` in the request's
scope before the app runs and writes it once the response has started (or
the app has raised). Routes note what they touch through ``audit_of(request)``
*before* checking scopes, so a refused attempt names the resource it was
refused; ``principal_of`` notes the key's name. Nothing else reaches the
record: never a query, a parameter, a header or a key, and ``path`` is the
route template (``/operations/{name}``), never the raw URL or its query string.

Resources use the scope vocabulary (``db:NAME``, ``api:NAME``, ``ops:NAME``),
so an audit line can be read against a key's scopes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iogate.core import events
from iogate.gateway.logging import current_request_id, log_line

__all__ = [
    "AUDIT_SCOPE_KEY",
    "AuditMiddleware",
    "AuditRecord",
    "audit_logger",
    "audit_of",
    "outcome_for",
]

AUDIT_SCOPE_KEY = "iogate.audit"

audit_logger = logging.getLogger("iogate.audit")

# A name noted from a request body is the client's text: keep a line bounded.
_MAX_NAME = 100
_MAX_NAMES = 50
_MAX_PATH = 200


@dataclass(slots=True)
class AuditRecord:
    """What one request touched; filled in by the routes while it runs."""

    key: str | None = None
    resources: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    outcome: str | None = None  # None: derived from the status
    error_type: str | None = None

    def touch(self, resource: str | None, kind: str) -> None:
        """Note one resource (``db:main``) and the kind of access (``sql:read``)."""
        if resource is not None:
            _add(self.resources, resource[:_MAX_NAME])
        _add(self.kinds, kind)


def _add(names: list[str], name: str) -> None:
    if name not in names and len(names) < _MAX_NAMES:
        names.append(name)


def audit_of(request: Request) -> AuditRecord:
    """This request's record; a detached one when no AuditMiddleware runs,
    so routes never need to know whether auditing is on."""
    record = request.scope.get(AUDIT_SCOPE_KEY)
    if isinstance(record, AuditRecord):
        return record
    record = AuditRecord()
    request.scope[AUDIT_SCOPE_KEY] = record
    return record


def outcome_for(status: int) -> str:
    """The outcome word for a status when the route did not name one."""
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    if status == 429:
        return "rate_limited"
    if status < 500:
        return "invalid"
    if status == 503:
        return "unavailable"
    if status == 504:
        return "timeout"
    return "error"


class AuditMiddleware:
    """Writes one ``iogate.audit`` record per HTTP request.

    Add it inside ``RequestIdMiddleware`` (so the record carries the request
    id) and outside the body limit (so a 413 is audited too). Wrapping twice
    is harmless: an inner instance sees the outer one's record and passes.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or isinstance(scope.get(AUDIT_SCOPE_KEY), AuditRecord):
            await self.app(scope, receive, send)
            return
        record = AuditRecord()
        scope[AUDIT_SCOPE_KEY] = record
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                tracer = events.tracer
                if tracer is not None:  # before the response ends the request's span
                    template = getattr(scope.get("route"), "path", None)
                    if isinstance(template, str):
                        tracer.route(scope.get("method", ""), template)
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            _emit(scope, record, status, round((time.perf_counter() - started) * 1000, 3))


def _route_path(scope: Scope) -> str:
    """The matched route's template; the raw path (capped) when none matched."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if isinstance(template, str):
        return template
    path: str = scope.get("path", "")
    return path[:_MAX_PATH]


def _emit(scope: Scope, record: AuditRecord, status: int, duration_ms: float) -> None:
    if not audit_logger.isEnabledFor(logging.INFO):
        return
    outcome = record.outcome or outcome_for(status)
    method = scope.get("method", "")
    path = _route_path(scope)
    fields: dict[str, Any] = {
        "key": record.key,
        "method": method,
        "path": path,
        # Copies: the writer thread may format the line after the request is gone.
        "resources": list(record.resources),
        "kinds": list(record.kinds),
        "status": status,
        "outcome": outcome,
        "error_type": record.error_type,
        "duration_ms": duration_ms,
    }
    # The scope's id first: outside RequestIdMiddleware the contextvar is gone.
    log_line(
        audit_logger,
        logging.INFO,
        "%s %s by %s: %s %s",
        (method, path, record.key or "-", status, outcome),
        fields,
        scope.get("iogate.request_id") or current_request_id(),
    )
