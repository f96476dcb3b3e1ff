"""Prometheus metrics fed by the events backends emit.

Backends never import this module: ``MetricsCollector.install()`` registers a
hook with ``iogate.core.events`` and every ``OperationEvent`` / ``PoolEvent``
becomes histogram and counter samples. Pool and breaker gauges describe the
present, not a history, so they are sampled from callbacks
(``add_pool_source``, ``add_breaker_source``, ``watch``) when rendered.

Several worker processes (``iogate serve --workers N``) each hold their own
counters; a scrape reaches one of them. prometheus-client's multiprocess mode
solves this with one memory-mapped file per process in a shared directory,
summed at scrape time. It is switched on by ``PROMETHEUS_MULTIPROC_DIR`` in
the environment *before prometheus_client is imported*; the library never
reads the environment, so the gateway sets that variable for its workers and
passes the same directory here as ``multiprocess_dir`` (see docs/metrics.md).
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Protocol

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Gauge,
    multiprocess,  # untyped: its calls below carry a type: ignore
)

from iogate.core.errors import ConfigError
from iogate.core.events import Event, add_hook, remove_hook
from iogate.core.resource import Kind, PoolStats, Resource
from iogate.metrics.feed import PrometheusEvents, TalliedEvents, bounds
from iogate.metrics.multiprocess import (
    check_multiprocess,
    encode,
    mark_process_dead,
    prune_dead_workers,
    render_multiprocess,
)
from iogate.metrics.seed import SEED_METRICS

__all__ = [
    "BREAKER_STATE_VALUES",
    "DEFAULT_ACQUIRE_BUCKETS",
    "DEFAULT_DURATION_BUCKETS",
    "BreakerSource",
    "MetricsCollector",
    "PoolSource",
    "mark_process_dead",
    "prune_dead_workers",
    "render_multiprocess",
]

logger = logging.getLogger("iogate.metrics")

# Database round trips on loopback take well under a millisecond, so the
# buckets start lower than prometheus-client's default (5 ms).
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
DEFAULT_ACQUIRE_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
)  # fmt: skip
DEFAULT_REFRESH_INTERVAL = 1.0

# Gauge encoding of a breaker state: higher is worse, so max() across
# workers reports the worst one.
BREAKER_STATE_VALUES: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}

_POOL_FIELDS = ("size", "max_size", "in_use", "idle", "waiting")

PoolSource = Callable[[], Mapping[str, Mapping[str, int]]]
"""Returns ``{resource: {"size", "in_use", "idle", "waiting", ["max_size"]}}``."""

BreakerSource = Callable[[], Mapping[str, Any]]
"""Returns ``{resource: state}``; a state is a str or an enum whose value is one."""


class ResourceRegistry(Protocol):
    """What ``watch`` needs of an orchestrator: its named managers."""

    @property
    def databases(self) -> Mapping[str, Resource]: ...

    @property
    def apis(self) -> Mapping[str, Resource]: ...


class MetricsCollector:
    """Turns iogate events into Prometheus metrics; ``render()`` serves them.

    ``with MetricsCollector() as collector:`` installs the event hook for the
    block; ``install()`` / ``uninstall()`` do the same explicitly and are
    idempotent.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        multiprocess_dir: str | os.PathLike[str] | None = None,
        duration_buckets: Iterable[float] = DEFAULT_DURATION_BUCKETS,
        acquire_buckets: Iterable[float] = DEFAULT_ACQUIRE_BUCKETS,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.multiprocess_dir = None if multiprocess_dir is None else os.fspath(multiprocess_dir)
        if self.multiprocess_dir is not None:
            check_multiprocess(self.multiprocess_dir)
            if registry is not None:
                raise ConfigError("metrics: pass either registry or multiprocess_dir, not both")
            # Samples go to the per-process files; the scrape registry reads
            # them all back. Registering the metrics themselves as well would
            # report this process twice.
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            target: CollectorRegistry | None = None
        else:
            self.registry = CollectorRegistry() if registry is None else registry
            target = self.registry
            if self.registry is not REGISTRY:
                for metric in SEED_METRICS:
                    self.registry.register(metric)

        self._pool_sources: list[PoolSource] = []
        self._breaker_sources: list[BreakerSource] = []
        self._installed = False
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._last_refresh = -float("inf")
        duration_bounds = bounds(duration_buckets)
        acquire_bounds = bounds(acquire_buckets)
        self._events: TalliedEvents | PrometheusEvents
        if self.multiprocess_dir is None:
            # One process: events queued, added up in batches (no lock per event), turned
            # into metric families when the registry is collected.
            tallied = TalliedEvents(duration_bounds, acquire_bounds)
            self.registry.register(tallied)
            self._events = tallied
            self._hook: Callable[[Event], None] = tallied.observe
        else:
            # Several processes: every sample goes to this worker's files at
            # once, so any worker's scrape sums up-to-date values.
            self._events = PrometheusEvents(duration_bounds, acquire_bounds)
            self._hook = self._on_event_multiprocess
        # Across workers the pool gauges add up (livesum) and the breaker
        # shows the worst state (livemax); single-process mode ignores this.
        self.pool_gauges: dict[str, Gauge] = {
            field: Gauge(
                f"iogate_pool_{field}",
                f"Pool {field.replace('_', ' ')} (connections; waiting is callers)",
                ("resource",),
                multiprocess_mode="livesum",
                registry=target,
            )
            for field in _POOL_FIELDS
        }
        self.breaker_state = Gauge(
            "iogate_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ("resource",),
            multiprocess_mode="livemax",
            registry=target,
        )

    # -- lifecycle ----------------------------------------------------------

    def install(self) -> None:
        """Start observing iogate events; idempotent."""
        add_hook(self._hook)
        self._installed = True

    def uninstall(self) -> None:
        """Stop observing iogate events; idempotent."""
        remove_hook(self._hook)
        self._installed = False

    @property
    def installed(self) -> bool:
        return self._installed

    def __enter__(self) -> MetricsCollector:
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
        mode = f"multiprocess_dir={self.multiprocess_dir!r}" if self.multiprocess_dir else "single"
        return (
            f"<MetricsCollector {mode} installed={self._installed} "
            f"pool_sources={len(self._pool_sources)} "
            f"breaker_sources={len(self._breaker_sources)}>"
        )

    # -- sources of gauges --------------------------------------------------

    def add_pool_source(self, source: PoolSource) -> None:
        self._pool_sources.append(source)

    def add_breaker_source(self, source: BreakerSource) -> None:
        self._breaker_sources.append(source)

    def watch(self, resources: ResourceRegistry) -> None:
        """Sample pool and breaker state of every manager ``resources`` holds.

        Takes anything with ``databases`` and ``apis`` mappings (an
        ``AsyncOperationOrchestrator``); managers added later are seen too.
        """

        def managers() -> dict[str, Resource]:
            return {**resources.databases, **resources.apis}

        def pools() -> dict[str, Mapping[str, int]]:
            return {name: _pool_numbers(m.pool_stats()) for name, m in managers().items()}

        def breakers() -> dict[str, Any]:
            return {
                name: m.health().breaker for name, m in managers().items() if m.kind is Kind.API
            }

        self.add_pool_source(pools)
        self.add_breaker_source(breakers)

    def refresh(self) -> None:
        """Sample every pool and breaker source into the gauges now.

        A failing source is logged and skipped: one broken resource must not
        take ``/metrics`` down with it.
        """
        self._last_refresh = self._clock()
        pools: dict[str, Mapping[str, int]] = {}
        for pool_source in self._pool_sources:
            try:
                pools.update(pool_source())
            except Exception:
                logger.exception("metrics pool source %r failed", pool_source)
        breakers: dict[str, Any] = {}
        for breaker_source in self._breaker_sources:
            try:
                breakers.update(breaker_source())
            except Exception:
                logger.exception("metrics breaker source %r failed", breaker_source)

        if self.multiprocess_dir is None:
            # Forget resources that are gone (a closed or removed manager).
            # Not in multiprocess mode, where values live in files and
            # clear() would only hide them from this process.
            for gauge in (*self.pool_gauges.values(), self.breaker_state):
                gauge.clear()
        for resource, stats in pools.items():
            for field, gauge in self.pool_gauges.items():
                if field in stats:
                    gauge.labels(resource).set(stats[field])
        for resource, state in breakers.items():
            code = _breaker_code(state)
            if code is not None:
                self.breaker_state.labels(resource).set(code)

    # -- exposition ---------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """``(body, content_type)`` for ``GET /metrics``.

        ``accept`` is the request's ``Accept`` header: OpenMetrics when the
        scraper asks for it, the classic text format otherwise.
        """
        self.refresh()
        if self.multiprocess_dir is not None:
            prune_dead_workers(self.multiprocess_dir)
        return encode(self.registry, accept)

    # -- event hook (multiprocess mode; one process uses TalliedEvents.observe)

    def _on_event_multiprocess(self, event: Event) -> None:
        self._events.observe(event)
        # Other workers only publish gauges when they sample them; without a
        # scrape of their own that is here, at most once per interval.
        if self._clock() - self._last_refresh >= self._refresh_interval:
            self.refresh()


def _pool_numbers(stats: PoolStats) -> dict[str, int]:
    return {
        "size": stats["size"],
        "max_size": stats["max_size"],
        "in_use": stats["in_use"],
        "idle": stats["idle"],
        "waiting": stats["waiting"],
    }


def _breaker_code(state: Any) -> int | None:
    if isinstance(state, enum.Enum):
        state = state.value
    if not isinstance(state, str):
        return None
    return BREAKER_STATE_VALUES.get(state.lower().replace("-", "_"))
