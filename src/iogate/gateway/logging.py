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

Off the hot path (``configure_logging(background=True)``, what ``iogate
serve`` uses): the request's thread only builds the record and appends it to
a bounded queue; ``BackgroundStreamHandler``'s writer thread formats and
writes whatever has queued up, in one ``write`` per batch. When the queue is
full (the stream does not keep up) records are dropped and counted, and the
count is written as a WARNING line as soon as there is room again; the queue
is drained on ``close()``/``flush()``, which ``logging.shutdown`` calls at exit.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import re
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, TextIO
from urllib.parse import unquote

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iogate.core.events import Event, OperationEvent, add_hook, remove_hook
from iogate.core.redact import redact_text, redact_url, url_password

__all__ = [
    "DEFAULT_LOG_QUEUE",
    "REQUEST_ID_HEADER",
    "BackgroundStreamHandler",
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
            if access_logger.isEnabledFor(logging.INFO):
                method = scope.get("method", "")
                log_line(
                    access_logger,
                    logging.INFO,
                    '"%s %s" %s in %.1f ms',
                    (method, path, status, duration_ms),
                    {"method": method, "path": path, "status": status, "duration_ms": duration_ms},
                    request_id,
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
    log_line(
        operation_logger,
        level,
        "%s %s on %s: %s in %.1f ms",
        (event.kind, event.operation, event.resource, outcome, duration_ms),
        {
            "resource": event.resource,
            "kind": event.kind,
            "backend": event.backend,
            "operation": event.operation,
            "outcome": outcome,
            "duration_ms": duration_ms,
            "attempts": event.attempts,
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

    def needed(self, text: str) -> bool:
        """Whether ``__call__`` could change ``text`` (or a part of it): a cheap
        screen, so a line whose fields are all plain words is masked in one test."""
        if "://" in text:
            return True
        lowered = text.lower()
        if "bearer" in lowered or "basic" in lowered or "token" in lowered:
            return True
        for secret in self.secrets:  # noqa: SIM110 -- any() over a generator costs twice as much
            if secret in text:
                return True
        return False


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
    if type(fields) is dict:  # what iogate passes; an ABC check costs more than the rest
        return fields
    return fields if isinstance(fields, Mapping) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, fields.

    Built for the three lines every request writes: the timestamp's date and
    time are formatted once per second, and the redactor runs on the message
    and each string field only when one screen of them all says it could
    change something (``Redactor.needed``). ``line()`` formats from the parts
    without a ``LogRecord`` (``BackgroundStreamHandler``'s direct lines).
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        exception = None
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted early by BackgroundStreamHandler
            exception = record.exc_text
        return self.line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            getattr(record, "request_id", None),
            _fields(record),
            exception,
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        request_id: str | None,
        fields: Mapping[str, Any],
        exception: str | None = None,
    ) -> str:
        second = int(created)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._second_text = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        # isoformat(timespec="milliseconds") of the same instant, at a fraction of its cost.
        millis = int((created - second) * 1000)
        entry: dict[str, Any] = {
            "ts": f"{self._second_text}.{millis:03d}+00:00",
            "level": level,
            "logger": logger,
            "message": message,
            "request_id": request_id,
        }
        texts = [message]
        for key, value in fields.items():
            if key not in entry:
                entry[key] = value
                if type(value) is str:
                    texts.append(value)
        redactor = self.redactor
        if redactor.needed("\n".join(texts)):
            for key, value in entry.items():
                if type(value) is str and key not in _PLAIN_KEYS:
                    entry[key] = redactor(value)
        if exception is not None:
            entry["exception"] = redactor(exception)
        return orjson.dumps(entry, default=str).decode()


# Written by iogate itself from a closed vocabulary (or a sanitised id).
_PLAIN_KEYS = frozenset(("ts", "level", "logger", "request_id"))


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
        elif record.exc_text:  # formatted early by BackgroundStreamHandler
            line += "\n" + record.exc_text
        return self.redactor(line)


# -- off the hot path ----------------------------------------------------------------

DEFAULT_LOG_QUEUE = 10_000
"""Records a ``BackgroundStreamHandler`` holds before it drops: about three
seconds of a busy gateway (three lines per request), a few MB."""
DEFAULT_FLUSH_INTERVAL = 0.05
# Arguments whose text cannot change between the call and the writer's
# formatting; anything else is formatted at once (the stdlib's QueueHandler
# formats every record at once for the same reason).
_FROZEN_ARGS = frozenset((str, int, float, bool, type(None)))
_dropped_logger = "iogate.logging"


_Direct = tuple[float, int, str, str, tuple[Any, ...], dict[str, Any], str | None]
_UNSET: Any = object()
_direct_handler: BackgroundStreamHandler | None = None


def log_line(
    logger: logging.Logger,
    level: int,
    msg: str,
    args: tuple[Any, ...],
    fields: dict[str, Any],
    request_id: str | None = _UNSET,
) -> None:
    """Log one of iogate's per-request lines (access, audit, operation).

    The same record as ``logger.log(level, msg, *args, extra={"fields": ...})``.
    When the background handler installed by ``configure_logging`` is the only
    handler the record would reach (``sole_receiver``), the line goes to its
    queue as a tuple, and the writer formats it without ever building a
    ``LogRecord``: that and the handler chain were half of a line's cost.
    Anything else listening -- another handler, a logger filter, pytest's
    ``caplog`` -- gets the ordinary record. The caller has checked
    ``logger.isEnabledFor(level)``; ``args`` must be immutable values.
    """
    if request_id is _UNSET:
        request_id = _request_id.get()
    handler = _direct_handler
    if handler is not None and handler.sole_receiver(logger, level):
        handler.enqueue_direct((time.time(), level, logger.name, msg, args, fields, request_id))
        return
    logger.log(level, msg, *args, extra={"fields": fields, "request_id": request_id})


class BackgroundStreamHandler(logging.Handler):
    """Formats and writes records on a writer thread, in batches.

    ``handle`` runs the handler's filters in the caller's thread (so the
    request id is the caller's) and appends the record to a bounded deque;
    the writer wakes every ``flush_interval`` seconds (or when a quarter of
    the queue is used), formats what has queued up and writes it with one
    ``write`` and one ``flush``. Records beyond ``capacity`` are dropped and
    counted (``dropped``); the writer then writes one WARNING line with the
    count. ``flush()`` writes everything queued before it returns and
    ``close()`` also stops the thread; ``logging.shutdown`` (at exit) calls
    both, so a process that ends normally, SIGTERM included, loses nothing.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        capacity: int = DEFAULT_LOG_QUEUE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.stream = stream
        self.capacity = capacity
        self.flush_interval = flush_interval
        self.dropped = 0  # every record dropped so far
        self._reported = 0  # of which the log already says so
        # LogRecords, and direct lines as (created, level, logger name, msg,
        # args, fields, request id) tuples.
        self._records: deque[logging.LogRecord | _Direct] = deque()
        self._early = max(1, capacity // 4)
        self._wake = threading.Event()
        self._drain_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._start()
        # After a fork the child has the queue but not the thread. A weak
        # reference: the fork hook must not keep a discarded handler alive.
        handler = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart(handler))

    def _start(self) -> None:
        if self._stopping:
            return
        self._thread = threading.Thread(target=self._run, name="iogate-log-writer", daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> Any:
        # No handler lock: appending to a deque is atomic.
        accepted = self.filter(record)
        if isinstance(accepted, logging.LogRecord):  # Python 3.12+: a filter may replace it
            record = accepted
        if accepted:
            self.emit(record)
        return accepted

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if args:
            frozen = type(args) is tuple
            if frozen:
                for arg in args:
                    if type(arg) not in _FROZEN_ARGS:
                        frozen = False
                        break
            if not frozen:
                try:
                    record.msg, record.args = record.getMessage(), None
                except Exception:
                    self.handleError(record)
                    return
        if record.exc_info and not record.exc_text:
            # The traceback's text now: its frames may change or go.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        records = self._records
        if len(records) >= self.capacity:
            with self._drop_lock:
                self.dropped += 1
            self._wake.set()
            return
        records.append(record)
        if len(records) >= self._early:
            self._wake.set()

    # -- direct lines ------------------------------------------------------------

    def sole_receiver(self, logger: logging.Logger, level: int) -> bool:
        """Whether a record of ``logger`` at ``level`` would reach this handler
        and nothing else: no other handler, no logger filter, this handler
        with only its own request-id filter, on the root logger."""
        if level < self.level or len(self.filters) != 1:
            return False
        node: logging.Logger | None = logger
        while node is not None:
            if node.filters:
                return False
            if node.handlers:
                handlers = node.handlers
                return node.parent is None and len(handlers) == 1 and handlers[0] is self
            if not node.propagate:
                return False
            node = node.parent
        return False

    def enqueue_direct(self, line: _Direct) -> None:
        """Queue one line that skips the ``LogRecord``; see ``log_line``."""
        records = self._records
        if len(records) >= self.capacity:
            with self._drop_lock:
                self.dropped += 1
            self._wake.set()
            return
        records.append(line)
        if len(records) >= self._early:
            self._wake.set()

    def _format_direct(self, line: _Direct) -> str:
        formatter = self.formatter
        if type(formatter) is JsonFormatter:
            created, level, name, msg, args, fields, request_id = line
            return formatter.line(
                created,
                logging.getLevelName(level),
                name,
                msg % args if args else msg,
                request_id,
                fields,
            )
        return self.format(self._record_of(line))

    @staticmethod
    def _record_of(line: _Direct) -> logging.LogRecord:
        created, level, name, msg, args, fields, request_id = line
        record = logging.LogRecord(name, level, "", 0, msg, args or None, None)
        record.created = created
        record.msecs = int((created - int(created)) * 1000)
        record.fields = fields
        record.request_id = request_id
        return record

    # -- the writer's side -------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        with self._drain_lock:
            records = self._records
            lines: list[str] = []
            while records:
                item = records.popleft()
                try:
                    if isinstance(item, logging.LogRecord):
                        lines.append(self.format(item))
                    else:
                        lines.append(self._format_direct(item))
                except Exception:
                    if isinstance(item, logging.LogRecord):
                        self.handleError(item)
                    else:
                        self.handleError(self._record_of(item))
            dropped = self.dropped - self._reported
            if dropped:
                self._reported += dropped
                lines.append(self.format(_dropped_record(dropped)))
            if not lines:
                return
            lines.append("")
            try:
                self.stream.write("\n".join(lines))
                self.stream.flush()
            except Exception:
                # logging's own report (stderr, once per failure) of a lost batch.
                self.handleError(
                    logging.LogRecord(
                        _dropped_logger,
                        logging.ERROR,
                        __file__,
                        0,
                        "writing %d log lines failed",
                        (len(lines) - 1,),
                        None,
                    )
                )

    def flush(self) -> None:
        """Write every record queued so far (in the calling thread)."""
        self._drain()

    def close(self) -> None:
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._drain()
        _restore_switches(self)
        global _direct_handler
        if _direct_handler is self:
            _direct_handler = None
        super().close()

    @property
    def queued(self) -> int:
        return len(self._records)


def _restart(handler: weakref.ref[BackgroundStreamHandler]) -> None:
    alive = handler()
    if alive is not None:
        alive._start()


def _dropped_record(count: int) -> logging.LogRecord:
    record = logging.LogRecord(
        _dropped_logger,
        logging.WARNING,
        __file__,
        0,
        "%d log records dropped: the log stream did not keep up",
        (count,),
        None,
    )
    record.fields = {"dropped": count}
    record.request_id = None
    return record


# Where a record was made (file, line, function), its thread and its process:
# iogate's formatters show none of them, and finding the caller walks the stack
# on every call (the logging HOWTO's "Optimization" section lists these switches).
_CALLER_SWITCHES = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")


def _record_caller_info(enabled: bool) -> dict[str, Any]:
    previous = {name: getattr(logging, name) for name in _CALLER_SWITCHES}
    if not enabled:
        logging._srcfile = None
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
    return previous


_HANDLER_MARK = "_iogate_handler"
_SWITCHES_MARK = "_iogate_previous_switches"


def _restore_switches(handler: logging.Handler) -> None:
    """Put back the caller-info switches ``handler``'s installation found."""
    previous = getattr(handler, _SWITCHES_MARK, None)
    if previous:
        setattr(handler, _SWITCHES_MARK, None)
        for name, value in previous.items():
            setattr(logging, name, value)


class _StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The synchronous handler; closing it restores the caller-info switches."""

    def close(self) -> None:
        _restore_switches(self)
        super().close()


def configure_logging(
    *,
    level: str | int = "INFO",
    json: bool | None = None,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
    background: bool = False,
    queue_size: int = DEFAULT_LOG_QUEUE,
    caller_info: bool = False,
) -> logging.Handler:
    """Install iogate's handler on the root logger and return it.

    ``json=None`` picks JSON unless ``stream`` is a terminal. Calling it
    again replaces the handler it installed before (never anyone else's).
    uvicorn's loggers propagate to the root, so run uvicorn with
    ``log_config=None`` and ``access_log=False``: the middleware writes the
    access line, with the request id.

    ``background=True`` (``iogate serve``) formats and writes on a writer
    thread (``BackgroundStreamHandler``, at most ``queue_size`` records
    waiting); otherwise each record is written before the call returns.
    ``caller_info=False`` switches off what no iogate format shows -- the
    caller's file and line, thread and process -- for every logger in the
    process, until the handler is closed.
    """
    stream = stream if stream is not None else sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    redactor = Redactor(secrets)
    handler: logging.Handler
    if background:
        handler = BackgroundStreamHandler(stream, capacity=queue_size)
    else:
        handler = _StreamHandler(stream)
    handler.setFormatter(JsonFormatter(redactor) if json else ConsoleFormatter(redactor))
    handler.addFilter(RequestIdFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()  # restores the switches it found
    setattr(handler, _SWITCHES_MARK, _record_caller_info(caller_info))
    root.addHandler(handler)
    global _direct_handler
    _direct_handler = handler if isinstance(handler, BackgroundStreamHandler) else None
    if isinstance(level, str):
        # uvicorn's "trace" has no stdlib counterpart: the most verbose one.
        level = logging.getLevelName(level.upper())
        level = level if isinstance(level, int) else logging.DEBUG
    root.setLevel(level)
    return handler
