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

import logging
import sys
from collections.abc import Iterable
from typing import TextIO

from iogate.gateway.logging.context import (
    REQUEST_ID_HEADER,
    RequestIdFilter,
    current_request_id,
)
from iogate.gateway.logging.formatters import ConsoleFormatter, JsonFormatter
from iogate.gateway.logging.handler import (
    _HANDLER_MARK,
    _SWITCHES_MARK,
    DEFAULT_LOG_QUEUE,
    BackgroundStreamHandler,
    _record_caller_info,
    _StreamHandler,
    log_line,
    set_direct_handler,
)
from iogate.gateway.logging.middleware import RequestIdMiddleware
from iogate.gateway.logging.operation_log import install_operation_log, uninstall_operation_log
from iogate.gateway.logging.redaction import Redactor, secrets_of

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
    "log_line",
    "secrets_of",
    "uninstall_operation_log",
]


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
    set_direct_handler(handler)
    if isinstance(level, str):
        # uvicorn's "trace" has no stdlib counterpart: the most verbose one.
        level = logging.getLevelName(level.upper())
        level = level if isinstance(level, int) else logging.DEBUG
    root.setLevel(level)
    return handler
