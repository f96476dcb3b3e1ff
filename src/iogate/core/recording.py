"""One place where a finished operation is timed, counted and announced.

Every operation goes through :func:`record` wherever it runs — alone, inside
``manager.transaction()``, grouped by a batch, as a named operation or as an
API call — so ``/stats`` and ``/metrics`` do not depend on how the work was
grouped. It reads the clock once and builds an :class:`OperationEvent` only
when a hook is installed to receive it (this runs once per operation).

Measured idioms (instructions under callgrind, docs/benchmarks.md "The API
path taken apart"): the event is built by ``tuple.__new__`` rather than
``OperationEvent(...)``, whose ``__new__`` is a Python function (1,400
against 3,400), and the hooks are called here rather than through
``events.emit`` (one call less, about 1,100).
"""

from __future__ import annotations

import time

from iogate.core import events
from iogate.core.events import OperationEvent
from iogate.core.result import Result
from iogate.core.stats import OperationStats

__all__ = ["record"]

perf_counter = time.perf_counter
# The same tuple OperationEvent(...) builds, without its Python-level __new__.
_new_event = tuple.__new__


def record(
    stats: OperationStats | None,
    result: Result,
    started: float,
    resource: str,
    kind: str,
    backend: str,
    operation: str,
    attempts: int = 1,
) -> Result:
    """Time ``result`` from ``started`` (``perf_counter``), count it in ``stats``
    and emit its event; returns ``result`` (with ``duration_ms``/``attempts``),
    which it changes in place: pass a Result of the caller's own.

    ``operation`` is the event's label: callers pass a value from a closed set
    (a verb, ``query``, a registered name), never raw user input.
    """
    duration = perf_counter() - started
    # Whole microseconds, as round(ms, 3) would give, at a fifth of its cost.
    result.duration_ms = duration_ms = round(duration * 1_000_000) / 1000
    result.attempts = attempts
    error_type = result.error_type
    if stats is not None:  # None: counted from the events only (named operations)
        stats.record(duration_ms, error_type)
    hooks = events.hooks
    if hooks:
        event = _new_event(
            OperationEvent,
            (resource, kind, backend, operation, duration, error_type, attempts),
        )
        for hook in hooks:  # events.emit, inlined: a broken hook is logged, never raised
            try:
                hook(event)
            except Exception:
                events.logger.exception("instrumentation hook %r failed", hook)
    return result
