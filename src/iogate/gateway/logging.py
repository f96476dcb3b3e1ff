"""Structured logs with one request id per HTTP request, secrets redacted.

``RequestIdMiddleware`` (pure ASGI) gives every HTTP request an id -- the
caller's ``X-Request-ID`` when it is sane, a fresh one otherwise -- returns
it as a response header and keeps it in a contextvar for the request's
lifetime. Every log record passing through the handler installed by
``configure_logging`` gets that id, so an operation's log line (written by
``install_operation_log`` from the events the backends emit) names the request that
caused it, including operations run in tasks the request spawned (asyncio
copies contextvars into child tasks).

Output is one JSON object per line when the stream is not a terminal (what a
log shipper wants) and a readable line when it is. Both formats pass the
final text through ``Redactor``: DSN passwords, ``Bearer`` tokens, secret
query parameters and the configured secret values become ``***``.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TextIO
from urllib.parse import unquote

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iogate.core.events import Event, OperationEvent, add_hook, remove_hook
from iogate.core.redact import redact_text, redact_url, url_password

__all__ = [
    "REQUEST_ID_HEADER",
    "ConsoleFormatter",
    "JsonFormatter",
    "Redactor",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "configure_logging",
    "current_request_id",
    "install_operation_log",
    "secrets_of",
    "uninstall_operation_log",
]

REQUEST_ID_HEADER = "x-request-id"

# A caller's id is reused only when it cannot smuggle anything into a log
# line or a header: short, and from a conservative alphabet.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "iogate_request_id", default=None
)

access_logger = logging.getLogger("iogate.access")
operation_logger = logging.getLogger("iogate.operation")


def current_request_id() -> str | None:
    """The id of the HTTP request being served in this context, if any."""
    return _request_id.get()


def _new_request_id() -> str:
    return uuid.uuid4().hex


# -- middleware ------------------------------------------------------------------


class RequestIdMiddleware:
    """One request id per HTTP request: contextvar, response header, access log.

    Add it last (outermost) so that responses produced by other middleware,
    such as a 413 from the body limit, carry the header too. Wrapping twice
    is harmless: an inner instance sees the id the outer one chose.
    """

    def __init__(self, app: ASGIApp, *, header: str = REQUEST_ID_HEADER) -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        existing = scope.get("iogate.request_id")
        if existing is not None:
            await self.app(scope, receive, send)
            return
        request_id = self._incoming(scope) or _new_request_id()
        scope["iogate.request_id"] = request_id
        token = _request_id.set(request_id)
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding
        header_value = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != self.header]
                headers.append((self.header, header_value))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            # The path only: a query string may carry a token.
            path = scope.get("path", "")
            access_logger.info(
                '"%s %s" %s in %.1f ms',
                scope.get("method", ""),
                path,
                status,
                duration_ms,
                extra={
                    "fields": {
                        "method": scope.get("method", ""),
                        "path": path,
                        "status": status,
                        "duration_ms": duration_ms,
                    }
                },
            )
            _request_id.reset(token)

    def _incoming(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name == self.header:
                candidate = value.decode("latin-1")
                return candidate if _SANE_REQUEST_ID.fullmatch(candidate) else None
        return None


# -- operation log -----------------------------------------------------------------


def install_operation_log() -> None:
    """Log one line per finished operation from now on; idempotent.

    The hook is one module-level function, so installing it from several
    places (the app's lifespan, a test) never doubles the lines. The line is
    INFO for a success and WARNING for a failure.
    """
    add_hook(_log_operation)


def uninstall_operation_log() -> None:
    remove_hook(_log_operation)


def _log_operation(event: Event) -> None:
    if not isinstance(event, OperationEvent):
        return
    level = logging.INFO if event.error_type is None else logging.WARNING
    if not operation_logger.isEnabledFor(level):
        return
    duration_ms = round(event.duration_s * 1000, 3)
    outcome = event.error_type or "ok"
    operation_logger.log(
        level,
        "%s %s on %s: %s in %.1f ms",
        event.kind,
        event.operation,
        event.resource,
        outcome,
        duration_ms,
        extra={
            "fields": {
                "resource": event.resource,
                "kind": event.kind,
                "backend": event.backend,
                "operation": event.operation,
                "outcome": outcome,
                "duration_ms": duration_ms,
                "attempts": event.attempts,
            }
        },
    )


# -- redaction ---------------------------------------------------------------------

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]+")
_BEARER_HINT = re.compile(r"(?i)bearer|basic|token")


class Redactor:
    """Masks what must never reach a log: URL passwords, tokens, known secrets."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= 4}, key=len))[::-1]

    def __call__(self, text: str) -> str:
        # Known values first: a configured secret may itself look like a URL.
        text = redact_text(text, self.secrets)
        # The regexes only where they can match: most log fields are short
        # words (a method, a route, an outcome) and every line pays for this.
        if "://" in text:
            text = _URL.sub(lambda m: redact_url(m.group(0)), text)
        if _BEARER_HINT.search(text):
            text = _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
        return text


def secrets_of(settings: Any) -> list[str]:
    """Every secret value a ``Settings`` holds: API keys, header values, DSN passwords."""
    secrets: list[str] = []
    for key in settings.gateway.api_keys:
        if key.key:
            secrets.append(key.key)
    for api in settings.apis.values():
        for value in api.headers.values():
            secrets.append(value)
            # "Bearer abc": the token alone may be logged by a library.
            secrets.extend(part for part in value.split() if len(part) >= 8)
    for db in settings.databases.values():
        if db.url:
            password = url_password(db.url)
            if password:
                # As written in the URL and as a driver sees it (percent-decoded).
                secrets.extend({password, unquote(password)})
    return secrets


# -- formatting --------------------------------------------------------------------


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, fields."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redactor(record.getMessage()),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, self.redactor(value) if isinstance(value, str) else value)
        if record.exc_info:
            entry["exception"] = self.redactor(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """``12:00:00.123 INFO  iogate.access [rid] message`` for a person at a terminal."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        moment = time.strftime("%H:%M:%S", time.localtime(record.created))
        request_id = getattr(record, "request_id", None)
        rid = f" [{request_id}]" if request_id else ""
        line = (
            f"{moment}.{int(record.msecs):03d} {record.levelname:<7} {record.name}{rid} "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return self.redactor(line)


_HANDLER_MARK = "_iogate_handler"


def configure_logging(
    *,
    level: str | int = "INFO",
    json: bool | None = None,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> logging.Handler:
    """Install iogate's handler on the root logger and return it.

    ``json=None`` picks JSON unless ``stream`` is a terminal. Calling it
    again replaces the handler it installed before (never anyone else's).
    uvicorn's loggers propagate to the root, so run uvicorn with
    ``log_config=None`` and ``access_log=False``: the middleware writes the
    access line, with the request id.
    """
    stream = stream if stream is not None else sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(redactor) if json else ConsoleFormatter(redactor))
    handler.addFilter(RequestIdFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    if isinstance(level, str):
        # uvicorn's "trace" has no stdlib counterpart: the most verbose one.
        level = logging.getLevelName(level.upper())
        level = level if isinstance(level, int) else logging.DEBUG
    root.setLevel(level)
    return handler
