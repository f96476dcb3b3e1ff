"""Writing log lines off the hot path: ``BackgroundStreamHandler`` and ``log_line``."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, TextIO

from iogate.gateway.logging.context import request_id_var
from iogate.gateway.logging.formatters import JsonFormatter

__all__ = ["DEFAULT_LOG_QUEUE", "BackgroundStreamHandler", "log_line", "set_direct_handler"]

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
        request_id = request_id_var.get()
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


def set_direct_handler(handler: logging.Handler | None) -> None:
    """The handler ``log_line`` may feed directly (the one configure_logging installed)."""
    global _direct_handler
    _direct_handler = handler if isinstance(handler, BackgroundStreamHandler) else None
