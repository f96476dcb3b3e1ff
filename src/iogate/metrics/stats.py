"""Statistics per named operation, for ``GET /stats``.

Each manager already keeps statistics for its resource (``get_stats()``);
this registry adds the other axis: per named operation (``POST
/operations/{name}``), fed by ``OperationEvent(kind="operation")``. Memory is
bounded: each entry is an ``OperationStats`` (a fixed-size sketch and ring)
and the number of entries is capped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from iogate.core.events import Event, OperationEvent, add_hook, remove_hook
from iogate.core.stats import OperationStats

__all__ = ["DEFAULT_MAX_OPERATIONS", "StatsRegistry"]

# Named operations come from the configuration, so a few hundred at most;
# the cap only guards against a caller emitting unbounded names.
DEFAULT_MAX_OPERATIONS = 1024


class StatsRegistry:
    """Counts, success rate, throughput and latency percentiles per operation.

    ``with StatsRegistry() as stats:`` observes events for the block;
    ``install()`` / ``uninstall()`` do the same explicitly and are idempotent.
    """

    def __init__(
        self,
        *,
        kinds: Iterable[str] = ("operation",),
        max_operations: int = DEFAULT_MAX_OPERATIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kinds = frozenset(kinds)
        self.max_operations = max_operations
        self.dropped = 0  # events for new names past max_operations
        self._clock = clock
        self._stats: dict[str, OperationStats] = {}
        self._resources: dict[str, str] = {}

    def install(self) -> None:
        add_hook(self._on_event)

    def uninstall(self) -> None:
        remove_hook(self._on_event)

    def __enter__(self) -> StatsRegistry:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        return f"<StatsRegistry operations={len(self._stats)} dropped={self.dropped}>"

    def record(self, event: OperationEvent) -> None:
        """Add one finished operation (what the installed hook calls)."""
        name = event.operation
        stats = self._stats.get(name)
        if stats is None:
            if len(self._stats) >= self.max_operations:
                self.dropped += 1
                return
            stats = self._stats[name] = OperationStats(clock=self._clock)
        self._resources[name] = event.resource
        stats.record(event.duration_s * 1000, event.error_type)

    def get(self, name: str) -> OperationStats | None:
        return self._stats.get(name)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{name: {resource, count, errors, success_rate, throughput_per_s, latency_ms}}``."""
        return {
            name: {"resource": self._resources[name], **stats.snapshot()}
            for name, stats in sorted(self._stats.items())
        }

    def _on_event(self, event: Event) -> None:
        if isinstance(event, OperationEvent) and event.kind in self.kinds:
            self.record(event)
