"""Instrumentation hooks: backends emit frozen events, observers subscribe.

Backends never import the metrics module; the metrics module (or any user
code) registers a hook here. A failing hook is logged and never breaks the
operation that emitted the event.

Emitting sits on every operation's path, so it is built to cost nothing when
nobody listens: ``hooks`` is a tuple rebound by ``add_hook``/``remove_hook``,
and an emitter checks ``events.hooks`` (one attribute load) before it even
builds the event. The events are ``NamedTuple``s: as immutable as a frozen
dataclass, built in less than half the time (a frozen dataclass sets each
field through ``object.__setattr__``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from iogate.core.result import Result

__all__ = [
    "OperationEvent",
    "OperationTracer",
    "PoolEvent",
    "add_hook",
    "emit",
    "remove_hook",
    "set_tracer",
]

logger = logging.getLogger("iogate.events")


class OperationEvent(NamedTuple):
    """One finished operation on a resource."""

    resource: str
    kind: str  # "database" | "api" | "cache" | "operation"
    backend: str  # "postgresql", "sqlite", "redis", "http", ...
    operation: str  # "query", "GET", "get", a named operation ...
    duration_s: float
    error_type: str | None
    attempts: int = 1


class PoolEvent(NamedTuple):
    """Time a caller waited for a pooled connection."""

    resource: str
    backend: str
    wait_s: float
    acquired: bool


Event = OperationEvent | PoolEvent
Hook = Callable[[Event], None]

hooks: tuple[Hook, ...] = ()
"""The installed hooks; read it as ``events.hooks`` (it is rebound, not mutated)."""


def add_hook(hook: Hook) -> None:
    global hooks
    if hook not in hooks:
        hooks = (*hooks, hook)


def remove_hook(hook: Hook) -> None:
    global hooks
    hooks = tuple(h for h in hooks if h != hook)


def emit(event: Event) -> None:
    # Iterates a snapshot: a hook may add or remove hooks while it runs.
    for hook in hooks:
        try:
            hook(event)
        except Exception:  # a broken observer must not break the operation
            logger.exception("instrumentation hook %r failed", hook)


# -- tracing -------------------------------------------------------------------------


class OperationTracer(Protocol):
    """Spans around operations, installed by ``iogate.tracing.enable_tracing``.

    Unlike the hooks above, a tracer sees an operation start: its span is the
    current one while the operation runs (so what the operation calls is its
    child, and an API call forwards it as ``traceparent``). Emitters read
    ``events.tracer`` once and do nothing else when it is None, so iogate
    without tracing never imports OpenTelemetry and pays one attribute load.
    """

    def start(self, kind: str, target: Any, statement: Any = None, params: Any = None) -> Any:
        """Open and enter a span: ``kind`` is "database", "api", "batch" or
        "operation"; ``target`` the manager (or batch steps, operation)."""

    def finish(
        self,
        span: Any,
        result: Result | list[Result] | None,
        error: BaseException | None = None,
    ) -> None:
        """Close and leave ``span`` with the operation's Result (a batch's list
        of them), or the exception that ended it: a cancellation, a bug."""

    def inject(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        """``headers`` plus the current span's W3C trace context."""

    def route(self, method: str, template: str) -> None:
        """Name the current HTTP request's span after its route template."""


tracer: OperationTracer | None = None
"""The installed tracer; read it as ``events.tracer``."""


def set_tracer(new: OperationTracer | None) -> None:
    global tracer
    tracer = new
