"""Instrumentation hooks: backends emit frozen events, observers subscribe.

Backends never import the metrics module; the metrics module (or any user
code) registers a hook here. A failing hook is logged and never breaks the
operation that emitted the event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OperationEvent", "PoolEvent", "add_hook", "emit", "remove_hook"]

logger = logging.getLogger("iogate.events")


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationEvent:
    """One finished operation on a resource."""

    resource: str
    kind: str  # "database" | "api" | "cache" | "operation"
    backend: str  # "postgresql", "sqlite", "redis", "http", ...
    operation: str  # "query", "GET", "get", a named operation ...
    duration_s: float
    error_type: str | None
    attempts: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolEvent:
    """Time a caller waited for a pooled connection."""

    resource: str
    backend: str
    wait_s: float
    acquired: bool


Event = OperationEvent | PoolEvent
Hook = Callable[[Event], None]

_hooks: list[Hook] = []


def add_hook(hook: Hook) -> None:
    if hook not in _hooks:
        _hooks.append(hook)


def remove_hook(hook: Hook) -> None:
    if hook in _hooks:
        _hooks.remove(hook)


def emit(event: Event) -> None:
    for hook in _hooks:
        try:
            hook(event)
        except Exception:  # a broken observer must not break the operation
            logger.exception("instrumentation hook %r failed", hook)
