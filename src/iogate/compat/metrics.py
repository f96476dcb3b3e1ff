"""The seed 002 Prometheus metrics and the decorators that feed them.

The four metrics live in prometheus-client's default registry, exactly as the
seed declares them, so ``prometheus_client.generate_latest()`` shows them; a
``MetricsCollector`` also includes them in its own ``render()``.

Differences from the seed, all deliberate:

- durations come from ``time.perf_counter()`` (monotonic), not ``time.time()``;
- a returned failed ``Result`` counts as an error too (iogate operations
  report failure by returning, not raising); its duration is still observed,
  since the operation did run for that long;
- an exception increments the error counter and propagates unchanged, as in
  the seed; cancellation (``CancelledError``) is neither a duration nor an
  error.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from prometheus_client import Counter, Histogram

from iogate.core.result import Result
from iogate.metrics.seed import (
    API_OPERATION_DURATION,
    API_OPERATION_ERRORS,
    DB_OPERATION_DURATION,
    DB_OPERATION_ERRORS,
    SEED_METRICS,
)

__all__ = [
    "API_OPERATION_DURATION",
    "API_OPERATION_ERRORS",
    "DB_OPERATION_DURATION",
    "DB_OPERATION_ERRORS",
    "SEED_METRICS",
    "track_api_operation",
    "track_database_operation",
]

P = ParamSpec("P")
T = TypeVar("T")


def track_database_operation(
    operation_name: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Record the duration and errors of an async database function (seed 002)."""
    return _tracker(operation_name, DB_OPERATION_DURATION, DB_OPERATION_ERRORS)


def track_api_operation(
    operation_name: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Record the duration and errors of an async API function (seed 002)."""
    return _tracker(operation_name, API_OPERATION_DURATION, API_OPERATION_ERRORS)


def _tracker(
    operation_name: str, duration: Histogram, errors: Counter
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    # Children resolved once per decorated function, not once per call.
    duration_child = duration.labels(operation_name)
    errors_child = errors.labels(operation_name)

    def decorator(func: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        if not inspect.iscoroutinefunction(func):
            # A sync function would be timed at "returns a coroutine", not at
            # "finished": refuse it instead of recording nonsense.
            raise TypeError(f"{operation_name}: tracked functions must be async (async def)")

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                result = await func(*args, **kwargs)
            except Exception:
                errors_child.inc()
                raise
            duration_child.observe(time.perf_counter() - started)
            if isinstance(result, Result) and not result.success:
                errors_child.inc()
            return result

        return wrapper

    return decorator
