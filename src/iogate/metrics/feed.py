"""The event-fed metrics, two ways: tallied in-process, or written for several processes.

``TalliedEvents`` is the one-process hook (events queued, added up in
batches, turned into metric families when the registry is collected);
``PrometheusEvents`` writes every sample to prometheus-client's per-process
files at once (multiprocess mode). Both expose the same series.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import groupby, repeat, starmap
from operator import add, itemgetter
from typing import cast

from prometheus_client import Counter, Histogram
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from iogate.core.events import Event, OperationEvent, PoolEvent

__all__ = ["PrometheusEvents", "TalliedEvents", "bounds"]


# TalliedEvents adds up its queued events once this many are waiting (and at
# every collection): the queue stays small, the tally runs rarely.
_BATCH = 64
# A run of events of one label set at least this long is added up at once.
_RUN = 8
_first_four = itemgetter(0, 1, 2, 3)
_duration = itemgetter(4)
_error_type = itemgetter(5)
_attempts = itemgetter(6)
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


class PrometheusEvents:
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
        self.success = _Tally()  # its value is derived when collected (_successes)
        self.error = _Tally()
        self.retries = _Tally()
        self.errors: dict[str, _Tally] = {}

    def add_error(self, error_type: str) -> None:
        errors = self.errors.get(error_type)
        if errors is None:
            errors = self.errors[error_type] = _Tally()
        errors.value += 1


class TalliedEvents:
    """The event-fed metrics of one process, as a prometheus-client collector.

    ``Histogram.observe`` plus ``Counter.inc`` cost about 1.5 us per event
    (a lock and a method call per series). This hook only appends the event
    to a queue; the queue is tallied (plain additions) in batches of
    ``_BATCH`` and whenever the registry is collected (a scrape,
    ``render()``, ``get_sample_value``), so counts are exact at every
    collection. The series, names and samples are the ones prometheus-client's
    own Histogram and Counter expose, ``_created`` included (a series'
    ``_created`` is the time its first batch was tallied, never later than
    the first collection that shows it).

    Thread safety without a lock per event: any thread may emit and any
    thread may collect. ``deque.append`` and ``deque.popleft`` are atomic
    (one C call each, under the GIL or the deque's own lock on a free-threaded
    build), so an event appended while another thread tallies is either
    popped by that tally or left for the next one, never lost or counted
    twice. Only the tally (and the copy ``collect`` takes) holds ``_lock``,
    so one thread at a time pops and adds, and the ``len()`` it read is a
    lower bound of what it can pop. Measured (docs/benchmarks.md, "The API
    path taken apart"): the hook went from about 7,400 to about 4,400
    instructions per event (1,400 to queue, the rest its share of a tally).
    """

    def __init__(
        self, duration_bounds: tuple[float, ...], acquire_bounds: tuple[float, ...]
    ) -> None:
        self._lock = threading.Lock()
        self._pending: deque[Event] = deque()
        self._duration_bounds = (*duration_bounds, math.inf)
        self._acquire_bounds = (*acquire_bounds, math.inf)
        # Keyed by the event's first four fields as they come
        # (resource, kind, backend, operation): a slice, no reordering per event.
        self._operations: dict[tuple[str, ...], _OperationTally] = {}
        self._acquire_wait: dict[tuple[str, str], _Tally] = {}
        self._acquire_failures: dict[tuple[str, str], _Tally] = {}

    def observe(self, event: Event) -> None:
        """The event hook; runs once per operation, so it only queues the event."""
        pending = self._pending
        pending.append(event)
        if len(pending) >= _BATCH:
            with self._lock:
                self._tally()

    def _tally(self) -> None:
        """Add up the queued events; the caller holds ``_lock``.

        Consecutive events of one label set (one manager's calls, mostly) are
        added up as a run: its durations sorted once and the bucket counts
        read off with one bisection per bound, its sum, errors and retries
        through C-level passes. A queue of one label set only (the common
        case under load) is read column by column (``zip``) without looking
        for runs; a short run goes event by event. Measured (docs/
        benchmarks.md, "The API path, third pass"): about 1,700 instructions
        per event, against 3,150 with runs found by ``groupby`` and 4,800
        one at a time.
        """
        pending = self._pending
        # Only the lock holder pops, so at least len(pending) events are
        # there; starmap calls popleft from C, no Python loop per event.
        events = list(starmap(pending.popleft, repeat((), len(pending))))
        if len(events) >= _RUN:
            columns = list(zip(*events, strict=False))
            # Seven columns only when every event is an OperationEvent (a
            # PoolEvent has four fields).
            if len(columns) == 7 and all(
                column.count(column[0]) == len(column) for column in columns[:4]
            ):
                only = cast(OperationEvent, events[0])
                self._tally_run(only[:4], columns[4], columns[5], columns[6])
                return
        # An OperationEvent's key is four str, a PoolEvent's holds a float and
        # a bool: the two kinds never share a run.
        for _, run in groupby(events, _first_four):
            batch = list(run)
            first = batch[0]
            if not isinstance(first, OperationEvent):
                for event in batch:
                    self._tally_pool(event)  # type: ignore[arg-type]
            elif len(batch) < _RUN:
                for event in batch:
                    self._tally_operation(event)  # type: ignore[arg-type]
            else:
                self._tally_run(
                    first[:4],
                    tuple(map(_duration, batch)),
                    tuple(map(_error_type, batch)),
                    tuple(map(_attempts, batch)),
                )

    def _operation_tally(self, labels: tuple[str, ...]) -> _OperationTally:
        tally = self._operations.get(labels)
        if tally is None:
            tally = self._operations[labels] = _OperationTally(len(self._duration_bounds))
        return tally

    def _tally_operation(self, event: OperationEvent) -> None:
        tally = self._operation_tally(event[:4])
        _, _, _, _, duration, error_type, attempts = event
        histogram = tally.duration
        histogram.buckets[bisect_left(self._duration_bounds, duration)] += 1
        histogram.sum += duration
        # Successes are not counted here: every event lands in one duration
        # bucket, so collect() reads them as count - errors.
        if error_type is not None:
            tally.error.value += 1
            tally.add_error(error_type)
        if attempts > 1:
            tally.retries.value += attempts - 1

    def _tally_run(
        self,
        labels: tuple[str, ...],
        durations: Sequence[float],
        error_types: Sequence[str | None],
        attempts: Sequence[int],
    ) -> None:
        """A run of events of one label set, given column by column."""
        tally = self._operation_tally(labels)
        histogram = tally.duration
        # Added one by one in event order, as prometheus-client's Histogram
        # does, so the sum is the same to the last bit.
        histogram.sum = reduce(add, durations, histogram.sum)
        ordered = sorted(durations)
        buckets = histogram.buckets
        below = 0
        for index, bound in enumerate(self._duration_bounds):
            upto = bisect_right(ordered, bound)  # bucket index = bisect_left(bounds, d)
            buckets[index] += upto - below
            below = upto
        failed = len(error_types) - error_types.count(None)
        if failed:
            tally.error.value += failed
            for error_type in error_types:
                if error_type is not None:
                    tally.add_error(error_type)
        if max(attempts) > 1:
            tally.retries.value += sum(a - 1 for a in attempts if a > 1)

    def _tally_pool(self, event: PoolEvent) -> None:
        labels = (event.resource, event.backend)
        if event.acquired:
            wait = self._acquire_wait.get(labels)
            if wait is None:
                wait = self._acquire_wait[labels] = _Tally(len(self._acquire_bounds))
            wait.buckets[bisect_left(self._acquire_bounds, event.wait_s)] += 1
            wait.sum += event.wait_s
        else:
            failures = self._acquire_failures.get(labels)
            if failures is None:
                failures = self._acquire_failures[labels] = _Tally()
            failures.value += 1

    # prometheus-client's collector protocol ------------------------------------

    def describe(self) -> list[Metric]:
        """The names, so registering twice in one registry is refused as before."""
        return list(_families())

    def collect(self) -> list[Metric]:
        with self._lock:  # a consistent copy; the families are built outside the lock
            self._tally()
            operations = [
                (
                    (kind, resource, backend, operation),
                    _copy(t.duration),
                    _successes(t),
                    _copy(t.error),
                    _copy(t.retries),
                    [(name, _copy(e)) for name, e in t.errors.items()],
                )
                for (resource, kind, backend, operation), t in self._operations.items()
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


def bounds(buckets: Iterable[float]) -> tuple[float, ...]:
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


def _successes(tally: _OperationTally) -> _Tally:
    """The success counter: every event is in one duration bucket, errors are counted."""
    copy = _copy(tally.success)
    copy.value = sum(tally.duration.buckets) - tally.error.value
    return copy


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
