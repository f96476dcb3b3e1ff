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
import math
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,  # untyped: its calls below carry a type: ignore
    values,
)
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from iogate.compat.metrics import SEED_METRICS
from iogate.core.errors import ConfigError
from iogate.core.events import Event, OperationEvent, PoolEvent, add_hook, remove_hook

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
    def databases(self) -> Mapping[str, Any]: ...

    @property
    def apis(self) -> Mapping[str, Any]: ...


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
            _check_multiprocess(self.multiprocess_dir)
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
        duration_bounds = _bounds(duration_buckets)
        acquire_bounds = _bounds(acquire_buckets)
        self._events: _TalliedEvents | _PrometheusEvents
        if self.multiprocess_dir is None:
            # One process: plain additions under one lock per event, turned
            # into metric families when the registry is collected.
            tallied = _TalliedEvents(duration_bounds, acquire_bounds)
            self.registry.register(tallied)
            self._events = tallied
            self._hook: Callable[[Event], None] = tallied.observe
        else:
            # Several processes: every sample goes to this worker's files at
            # once, so any worker's scrape sums up-to-date values.
            self._events = _PrometheusEvents(duration_bounds, acquire_bounds)
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

        def managers() -> dict[str, Any]:
            return {**resources.databases, **resources.apis}

        def pools() -> dict[str, Mapping[str, int]]:
            return {
                name: m.pool_stats() for name, m in managers().items() if hasattr(m, "pool_stats")
            }

        def breakers() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, manager in managers().items():
                state = getattr(manager, "breaker_state", None)
                if state is not None:
                    out[name] = state() if callable(state) else state
            return out

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
        return _encode(self.registry, accept)

    # -- event hook (multiprocess mode; one process uses _TalliedEvents.observe)

    def _on_event_multiprocess(self, event: Event) -> None:
        self._events.observe(event)
        # Other workers only publish gauges when they sample them; without a
        # scrape of their own that is here, at most once per interval.
        if self._clock() - self._last_refresh >= self._refresh_interval:
            self.refresh()


# -- the event-fed metrics, two ways -----------------------------------------------

_OP_LABELS = ("kind", "resource", "backend", "operation")
_POOL_LABELS = ("resource", "backend")
_DURATION = (
    "iogate_operation_duration_seconds",
    "Duration of one operation (including retries), by resource and operation",
)
_OPERATIONS = ("iogate_operations", "Finished operations by outcome (success or error)")
_ERRORS = ("iogate_operation_errors", "Failed operations by error_type")
_RETRIES = ("iogate_operation_retries", "Attempts beyond the first (attempts - 1 per operation)")
_ACQUIRE_WAIT = ("iogate_pool_acquire_wait_seconds", "Time callers waited for a pooled connection")
_ACQUIRE_FAILURES = (
    "iogate_pool_acquire_failures",
    "Acquires that gave up without a connection (timeout, closed pool)",
)


class _PrometheusEvents:
    """prometheus-client metric objects, fed sample by sample (multiprocess mode)."""

    def __init__(
        self, duration_bounds: tuple[float, ...], acquire_bounds: tuple[float, ...]
    ) -> None:
        # registry=None: in multiprocess mode the values live in files.
        self.duration = Histogram(*_DURATION, _OP_LABELS, buckets=duration_bounds, registry=None)
        self.operations = Counter(*_OPERATIONS, (*_OP_LABELS, "outcome"), registry=None)
        self.errors = Counter(*_ERRORS, (*_OP_LABELS, "error_type"), registry=None)
        self.retries = Counter(*_RETRIES, _OP_LABELS, registry=None)
        self.acquire_wait = Histogram(
            *_ACQUIRE_WAIT, _POOL_LABELS, buckets=acquire_bounds, registry=None
        )
        self.acquire_failures = Counter(*_ACQUIRE_FAILURES, _POOL_LABELS, registry=None)
        self._children: dict[tuple[str, str, str, str], _OperationChildren] = {}

    def observe(self, event: Event) -> None:
        if isinstance(event, OperationEvent):
            self._operation(event)
        elif isinstance(event, PoolEvent):
            labels = (event.resource, event.backend)
            if event.acquired:
                self.acquire_wait.labels(*labels).observe(event.wait_s)
            else:
                self.acquire_failures.labels(*labels).inc()

    def _operation(self, event: OperationEvent) -> None:
        labels = (event.kind, event.resource, event.backend, event.operation)
        children = self._children.get(labels)
        if children is None:
            # labels() costs a lock and a dict lookup per metric; resolving
            # them once per label set makes the hook several times cheaper.
            children = self._children[labels] = _OperationChildren(
                duration=self.duration.labels(*labels),
                success=self.operations.labels(*labels, "success"),
                error=self.operations.labels(*labels, "error"),
                retries=self.retries.labels(*labels),
            )
        children.duration.observe(event.duration_s)
        if event.error_type is None:
            children.success.inc()
        else:
            children.error.inc()
            self.errors.labels(*labels, event.error_type).inc()
        if event.attempts > 1:
            children.retries.inc(event.attempts - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class _OperationChildren:
    duration: Histogram
    success: Counter
    error: Counter
    retries: Counter


class _Tally:
    """One histogram or counter series: plain numbers, guarded by the owner's lock."""

    __slots__ = ("buckets", "created", "sum", "value")

    def __init__(self, bucket_count: int = 0) -> None:
        self.buckets = [0] * bucket_count  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0
        self.value = 0.0  # a counter's value
        self.created = time.time()


class _OperationTally:
    """Everything one (kind, resource, backend, operation) label set counts."""

    __slots__ = ("duration", "error", "errors", "retries", "success")

    def __init__(self, bucket_count: int) -> None:
        self.duration = _Tally(bucket_count)
        self.success = _Tally()
        self.error = _Tally()
        self.retries = _Tally()
        self.errors: dict[str, _Tally] = {}


class _TalliedEvents:
    """The event-fed metrics of one process, as a prometheus-client collector.

    ``Histogram.observe`` plus ``Counter.inc`` cost about 1.5 us per event
    (a lock and a method call per series); this hook takes one lock and
    adds a few numbers, and the metric families are built when the registry
    is collected (a scrape, ``render()``, ``get_sample_value``). Counts are
    exact at every collection. The series, names and samples are the ones
    prometheus-client's own Histogram and Counter expose, ``_created``
    included.
    """

    def __init__(
        self, duration_bounds: tuple[float, ...], acquire_bounds: tuple[float, ...]
    ) -> None:
        self._lock = threading.Lock()
        self._duration_bounds = (*duration_bounds, math.inf)
        self._acquire_bounds = (*acquire_bounds, math.inf)
        self._operations: dict[tuple[str, str, str, str], _OperationTally] = {}
        self._acquire_wait: dict[tuple[str, str], _Tally] = {}
        self._acquire_failures: dict[tuple[str, str], _Tally] = {}

    def observe(self, event: Event) -> None:
        """The event hook; runs once per operation, so it stays small."""
        if isinstance(event, OperationEvent):
            labels = (event.kind, event.resource, event.backend, event.operation)
            duration = event.duration_s
            index = bisect_left(self._duration_bounds, duration)
            with self._lock:
                tally = self._operations.get(labels)
                if tally is None:
                    tally = self._operations[labels] = _OperationTally(len(self._duration_bounds))
                histogram = tally.duration
                histogram.buckets[index] += 1
                histogram.sum += duration
                error_type = event.error_type
                if error_type is None:
                    tally.success.value += 1
                else:
                    tally.error.value += 1
                    errors = tally.errors.get(error_type)
                    if errors is None:
                        errors = tally.errors[error_type] = _Tally()
                    errors.value += 1
                if event.attempts > 1:
                    tally.retries.value += event.attempts - 1
        elif isinstance(event, PoolEvent):
            labels_pool = (event.resource, event.backend)
            with self._lock:
                if event.acquired:
                    wait = self._acquire_wait.get(labels_pool)
                    if wait is None:
                        wait = self._acquire_wait[labels_pool] = _Tally(len(self._acquire_bounds))
                    wait.buckets[bisect_left(self._acquire_bounds, event.wait_s)] += 1
                    wait.sum += event.wait_s
                else:
                    failures = self._acquire_failures.get(labels_pool)
                    if failures is None:
                        failures = self._acquire_failures[labels_pool] = _Tally()
                    failures.value += 1

    # prometheus-client's collector protocol ------------------------------------

    def describe(self) -> list[Metric]:
        """The names, so registering twice in one registry is refused as before."""
        return list(_families())

    def collect(self) -> list[Metric]:
        with self._lock:  # a consistent copy; the families are built outside the lock
            operations = [
                (
                    labels,
                    _copy(t.duration),
                    _copy(t.success),
                    _copy(t.error),
                    _copy(t.retries),
                    [(name, _copy(e)) for name, e in t.errors.items()],
                )
                for labels, t in self._operations.items()
            ]
            waits = [(labels, _copy(t)) for labels, t in self._acquire_wait.items()]
            failures = [(labels, _copy(t)) for labels, t in self._acquire_failures.items()]
        duration, outcomes, errors, retries, acquire_wait, acquire_failures = _families()
        created = _created_series()
        for labels, hist, success, error, retry, by_type in operations:
            _add_histogram(duration, _OP_LABELS, labels, hist, self._duration_bounds, created)
            _add_counter(outcomes, (*labels, "success"), success, created)
            _add_counter(outcomes, (*labels, "error"), error, created)
            _add_counter(retries, labels, retry, created)
            for error_type, tally in by_type:
                _add_counter(errors, (*labels, error_type), tally, created)
        for pool_labels, hist in waits:
            _add_histogram(
                acquire_wait, _POOL_LABELS, pool_labels, hist, self._acquire_bounds, created
            )
        for pool_labels, tally in failures:
            _add_counter(acquire_failures, pool_labels, tally, created)
        return [duration, outcomes, errors, retries, acquire_wait, acquire_failures]


def _bounds(buckets: Iterable[float]) -> tuple[float, ...]:
    """Finite upper bounds, ascending; +Inf is added by whoever uses them."""
    return tuple(sorted({float(b) for b in buckets} - {math.inf}))


def _families() -> tuple[
    HistogramMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    HistogramMetricFamily,
    CounterMetricFamily,
]:
    return (
        HistogramMetricFamily(*_DURATION, labels=_OP_LABELS),
        CounterMetricFamily(*_OPERATIONS, labels=(*_OP_LABELS, "outcome")),
        CounterMetricFamily(*_ERRORS, labels=(*_OP_LABELS, "error_type")),
        CounterMetricFamily(*_RETRIES, labels=_OP_LABELS),
        HistogramMetricFamily(*_ACQUIRE_WAIT, labels=_POOL_LABELS),
        CounterMetricFamily(*_ACQUIRE_FAILURES, labels=_POOL_LABELS),
    )


def _copy(tally: _Tally) -> _Tally:
    copy = _Tally()
    copy.buckets = list(tally.buckets)
    copy.sum, copy.value, copy.created = tally.sum, tally.value, tally.created
    return copy


def _add_histogram(
    family: HistogramMetricFamily,
    names: Sequence[str],
    labels: Sequence[str],
    tally: _Tally,
    bounds: tuple[float, ...],
    created: bool,
) -> None:
    cumulative = 0.0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip(bounds, tally.buckets, strict=True):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
    family.add_metric(labels, buckets, tally.sum)
    if created:
        label_map = dict(zip(names, labels, strict=True))
        family.add_sample(f"{family.name}_created", label_map, tally.created)


def _add_counter(
    family: CounterMetricFamily, labels: Sequence[str], tally: _Tally, created: bool
) -> None:
    family.add_metric(labels, tally.value, created=tally.created if created else None)


def _created_series() -> bool:
    # prometheus-client drops the _created series when its environment says
    # so (PROMETHEUS_DISABLE_CREATED_SERIES); follow its own metrics.
    return bool(getattr(prometheus_metrics, "_use_created", True))


def render_multiprocess(
    multiprocess_dir: str | os.PathLike[str], accept: str | None = None
) -> tuple[bytes, str]:
    """Render the metrics every process wrote to ``multiprocess_dir``.

    For a process that aggregates without recording (a supervisor, a
    sidecar, a test); it needs no multiprocess mode of its own.
    """
    path = os.fspath(multiprocess_dir)
    if not os.path.isdir(path):
        raise ConfigError(f"metrics: multiprocess_dir {path!r} is not a directory")
    prune_dead_workers(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return _encode(registry, accept)


def mark_process_dead(multiprocess_dir: str | os.PathLike[str], pid: int) -> None:
    """Drop the pool and breaker gauges of worker ``pid``, which has exited.

    Its counters and histograms stay (they still count toward the totals);
    its gauges described a pool that no longer exists. The process that
    supervises the workers calls this when one of them exits.
    """
    multiprocess.mark_process_dead(pid, os.fspath(multiprocess_dir))  # type: ignore[no-untyped-call]


def prune_dead_workers(multiprocess_dir: str | os.PathLike[str]) -> list[int]:
    """``mark_process_dead`` for every worker whose live gauges outlived it.

    uvicorn restarts a crashed worker without a hook to call
    ``mark_process_dead``, and a dead worker's pool gauges would inflate the
    sums forever; so every render checks the pids itself. The directory is
    local to one host, so the pids are this host's. Returns the pids pruned.
    """
    path = os.fspath(multiprocess_dir)
    pruned: set[int] = set()
    for file in Path(path).glob("gauge_live*_*.db"):
        pid_text = file.stem.rpartition("_")[2]
        if pid_text.isdigit() and int(pid_text) not in pruned and not _alive(int(pid_text)):
            mark_process_dead(path, int(pid_text))
            pruned.add(int(pid_text))
    return sorted(pruned)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _encode(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    if not accept:
        return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def _check_multiprocess(path: str) -> None:
    if not os.path.isdir(path):
        raise ConfigError(f"metrics: multiprocess_dir {path!r} is not a directory")
    # prometheus-client picks its value storage once, at import, from the
    # environment; if it chose in-memory values, nothing would reach the
    # directory and every other worker's scrape would miss this one.
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigError(
            "metrics: multiprocess_dir needs prometheus-client in multiprocess mode: "
            "set PROMETHEUS_MULTIPROC_DIR to the same directory in the worker's "
            "environment before prometheus_client is imported"
        )


def _breaker_code(state: Any) -> int | None:
    if isinstance(state, enum.Enum):
        state = state.value
    if not isinstance(state, str):
        return None
    return BREAKER_STATE_VALUES.get(state.lower().replace("-", "_"))
