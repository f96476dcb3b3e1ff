"""One log line per finished operation, from the events the backends emit."""

from __future__ import annotations

import logging

from iogate.core.events import Event, OperationEvent, add_hook, remove_hook
from iogate.gateway.logging.handler import log_line

__all__ = ["install_operation_log", "uninstall_operation_log"]

operation_logger = logging.getLogger("iogate.operation")


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
