"""Adaptive concurrency in the gateway: admission per resource, by priority.

A database or API configured with ``adaptive_concurrency`` gets a
:class:`~iogate.resilience.adaptive.ConcurrencyLimiter` (the algorithm and its
queue live there, free of I/O); this module puts it on the event loop and in
front of the routes that run operations:

- ``/database/execute``, ``/api/execute`` and named operations take one slot
  of their resource for the operation's duration, and their latency trains
  the limit; a named operation with ``interactive = true`` queues first;
- ``/batch/execute`` takes, on each resource it touches, as many slots as it
  can run there at once (its concurrency, at most its operations there; one
  for an atomic batch), for the whole batch, at the lowest priority. A
  batch's duration is not one operation's latency, so it never trains the
  limit;
- ``/health``, ``/ready``, ``/stats``, ``/metrics`` never pass through it.

A request that gets no slot is answered at once with 503
``application/problem+json`` (``error_type: "overloaded"``) and
``Retry-After``: when the queue is full, when its expected wait passes the
queue-time cap, or when it has waited that long. Refusals are counted in
``/stats`` (``admission``) and in ``iogate_admission_refused_total{resource,
priority, reason}``; each resource's current limit is
``iogate_admission_limit{resource}``.

Every worker process has its own limiters: with ``--workers N`` each learns
its share of the resource on its own.

The limit must follow the resource, not the gateway: an operation's measured
time also holds the event loop's delay in resuming it, which grows when the
gateway itself is short of CPU (the load generator, other processes, the
refusals themselves). Taken for the resource's latency, that delay would cut
the limit to its minimum and goodput with it. :class:`LoopLag` measures the
delay (how late a timer fires, as Node's toobusy does) and each sample has
it taken off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from iogate.core.deadline import Deadline
from iogate.gateway.responses import problem
from iogate.gateway.settings import AdaptiveConcurrencySettings, Settings
from iogate.orchestrator.batch import Step
from iogate.orchestrator.operations import OperationRegistry
from iogate.resilience.adaptive import (
    AdaptiveConfig,
    ConcurrencyLimiter,
    Permit,
    Priority,
    Refusal,
    RefusalReason,
)

__all__ = [
    "RETRY_AFTER_SECONDS",
    "Admission",
    "Overloaded",
    "admission_of",
    "admission_snapshot",
    "admitted",
    "batch_weights",
    "overloaded_response",
]

T = TypeVar("T")

RETRY_AFTER_SECONDS = 1
LAG_INTERVAL = 0.02  # seconds between two event-loop lag probes
LAG_SMOOTHING = 0.25  # weight of the newest probe
# Timers fire up to a millisecond late on an idle loop (libuv's resolution):
# that much is the clock, not lag.
LAG_RESOLUTION = 0.001


class LoopLag:
    """How late the event loop runs what is due, smoothed (seconds).

    A chain of ``call_later`` callbacks, not a task: nothing is left pending
    when the loop closes. Started on first use in a running loop.
    """

    def __init__(self, interval: float = LAG_INTERVAL) -> None:
        self.interval = interval
        self.lag = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def current(self) -> float:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self.lag = 0.0
            loop.call_later(self.interval, self._tick, loop, loop.time() + self.interval)
        return self.lag

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if loop is not self._loop:
            return  # a newer loop took over (tests)
        late = max(0.0, loop.time() - due - LAG_RESOLUTION)
        self.lag += LAG_SMOOTHING * (late - self.lag)
        loop.call_later(self.interval, self._tick, loop, loop.time() + self.interval)


class Overloaded(Exception):
    """No slot for this request on ``resource``."""

    def __init__(self, resource: str, refusal: Refusal) -> None:
        super().__init__(f"{resource}: {refusal.reason.value}")
        self.resource = resource
        self.refusal = refusal


class AdmissionMetrics:
    """Refusals by (resource, priority, reason) and each resource's limit.

    prometheus-client objects, so ``--workers N`` (multiprocess mode, where
    samples go to the shared files and ``registry`` is None) adds them up.
    Every series of the fixed label set exists from the start, at zero.
    """

    def __init__(self, registry: Any, resources: list[str]) -> None:
        from prometheus_client import Counter, Gauge

        self.refused = Counter(
            "iogate_admission_refused",
            "Requests refused by adaptive concurrency (503 overloaded)",
            ("resource", "priority", "reason"),
            registry=registry,
        )
        self.limit = Gauge(
            "iogate_admission_limit",
            "Adaptive concurrency limit per resource (summed over workers)",
            ("resource",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.add(resources)

    def add(self, resources: list[str]) -> None:
        for resource in resources:
            for priority in Priority:
                for reason in RefusalReason:
                    self.refused.labels(resource, priority.label, reason.value)

    def refusal(self, resource: str, refusal: Refusal) -> None:
        self.refused.labels(resource, refusal.priority.label, refusal.reason.value).inc()

    def limit_changed(self, limiter: ConcurrencyLimiter) -> None:
        self.limit.labels(limiter.name).set(limiter.limit.slots)


class Admission:
    """The limiters of one app, by resource name (absent: no limiter)."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: AdmissionMetrics | None = None,
        previous: Admission | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self.loop_lag: LoopLag = previous.loop_lag if previous is not None else LoopLag()
        self.limiters: dict[str, ConcurrencyLimiter] = {}
        for name, config in _configs(settings).items():
            kept = previous.limiters.get(name) if previous is not None else None
            if kept is not None and kept.config == config:
                self.limiters[name] = kept  # a reload keeps what was learned
                continue
            limiter = ConcurrencyLimiter(config, name=name, clock=clock)
            if metrics is not None:
                limiter.on_limit_change = metrics.limit_changed
                metrics.limit_changed(limiter)
            self.limiters[name] = limiter
        if metrics is not None:
            metrics.add(list(self.limiters))

    def __repr__(self) -> str:
        return f"<Admission {sorted(self.limiters)}>"

    def limiter(self, resource: str) -> ConcurrencyLimiter | None:
        return self.limiters.get(resource)

    def snapshot(self) -> dict[str, Any]:
        out = {name: limiter.snapshot() for name, limiter in sorted(self.limiters.items())}
        if out:
            for entry in out.values():
                entry["loop_lag_ms"] = round(self.loop_lag.lag * 1000, 3)
        return out

    async def acquire(
        self,
        limiter: ConcurrencyLimiter,
        priority: Priority,
        deadline: Deadline,
        *,
        weight: int = 1,
    ) -> Permit:
        """A slot, after waiting in the queue if need be; Overloaded if none."""
        outcome = limiter.try_acquire(priority, weight)
        if isinstance(outcome, Permit):
            return outcome
        if isinstance(outcome, Refusal):
            raise self._overloaded(limiter, outcome)
        waiter = outcome
        future: asyncio.Future[Permit | Refusal] = asyncio.get_running_loop().create_future()

        def ready(result: Permit | Refusal) -> None:
            if not future.done():
                future.set_result(result)

        waiter.on_ready = ready
        timeout = deadline.cap(limiter.limit.queue_timeout())
        try:
            async with asyncio.timeout(timeout):
                outcome = await future
        except TimeoutError:
            outcome = limiter.abandon(waiter)
        except asyncio.CancelledError:
            left = limiter.abandon(waiter, refuse=False)
            if isinstance(left, Permit):
                limiter.release(left)
            raise
        if isinstance(outcome, Refusal):
            raise self._overloaded(limiter, outcome)
        return outcome

    @contextlib.asynccontextmanager
    async def hold(
        self, weights: Mapping[str, int], priority: Priority, deadline: Deadline
    ) -> AsyncIterator[None]:
        """Slots on several resources at once (a batch), taken in name order
        so two batches never wait on each other crosswise; no latency sample."""
        held: list[tuple[ConcurrencyLimiter, Permit]] = []
        try:
            for name in sorted(weights):
                limiter = self.limiters.get(name)
                if limiter is not None:
                    permit = await self.acquire(limiter, priority, deadline, weight=weights[name])
                    held.append((limiter, permit))
            yield
        finally:
            for limiter, permit in reversed(held):
                limiter.release(permit)

    def _overloaded(self, limiter: ConcurrencyLimiter, refusal: Refusal) -> Overloaded:
        if self.metrics is not None:
            self.metrics.refusal(limiter.name, refusal)
        return Overloaded(limiter.name, refusal)


async def admitted(
    admission: Admission,
    limiter: ConcurrencyLimiter,
    priority: Priority,
    deadline: Deadline,
    operation: Callable[[], Awaitable[T]],
) -> T:
    """``operation()`` in one slot of ``limiter``; its latency trains the limit."""
    permit = await admission.acquire(limiter, priority, deadline)
    clock = admission._clock
    started = clock()
    try:
        value = await operation()
    except BaseException:
        limiter.release(permit)  # cancelled or broken: not a latency sample
        raise
    elapsed = clock() - started
    # The resource's share: without the loop's delay in resuming us.
    limiter.release(permit, max(elapsed - admission.loop_lag.current(), elapsed / 2))
    return value


def batch_weights(
    admission: Admission,
    steps: Iterable[Step],
    operations: OperationRegistry,
    *,
    concurrency: int,
    atomic: bool,
) -> dict[str, int]:
    """Slots a batch takes on each limited resource: what it can run there at
    once (its concurrency, at most its operations there), one when atomic
    (one transaction, one connection)."""
    counts: Counter[str] = Counter()
    for step in steps:
        if step.error is not None:
            continue
        if step.kind == "operation":
            op = operations.get(str(step.spec.get("name")))
            resource = (op.database or op.api) if op is not None else None
        else:
            resource = step.resource
        if resource is not None and resource in admission.limiters:
            counts[resource] += 1
    return {name: 1 if atomic else min(concurrency, count) for name, count in counts.items()}


def overloaded_response(exc: Overloaded) -> Response:
    refusal = exc.refusal
    why = (
        "its queue is full"
        if refusal.reason is RefusalReason.QUEUE_FULL
        else "the wait for a slot would pass the queue-time cap"
    )
    return problem(
        503,
        "Overloaded",
        f"{exc.resource!r} is at its adaptive concurrency limit ({refusal.limit}) and {why}; "
        f"retry after {RETRY_AFTER_SECONDS} s",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        error_type="overloaded",
        resource=exc.resource,
        reason=refusal.reason.value,
    )


def admission_of(request: Request, settings: Settings | None = None) -> Admission:
    """The app's Admission, built on first use and rebuilt if the settings
    object changes (a reload), keeping limiters whose configuration did not.

    ``settings``: the app's settings when the caller has them already (a
    route's dependency); the Admission is then found on the app object in
    two attribute reads, since ``app.state`` reads go through a Python
    ``__getattr__``.
    """
    app = request.scope["app"]
    if settings is not None:
        cached: Admission | None = getattr(app, "_iogate_admission", None)
        if cached is not None and cached.settings is settings:
            return cached
    admission = _admission_of_state(app.state)
    app._iogate_admission = admission
    return admission


def _admission_of_state(state: Any) -> Admission:
    admission: Admission | None = getattr(state, "admission", None)
    settings: Settings = state.settings
    if admission is None or admission.settings is not settings:
        metrics: AdmissionMetrics | None = getattr(state, "admission_metrics", None)
        configs = _configs(settings)
        if metrics is None and configs:
            metrics = _metrics_for(state, list(configs))
            state.admission_metrics = metrics
        admission = Admission(settings, metrics=metrics, previous=admission)
        state.admission = admission
    return admission


def admission_snapshot(request: Request) -> dict[str, Any]:
    """``/stats``' ``admission``: each limited resource's limit, queue and refusals."""
    return admission_of(request).snapshot()


def _configs(settings: Settings) -> dict[str, AdaptiveConfig]:
    chosen: dict[str, AdaptiveConcurrencySettings | None] = {
        **{name: db.adaptive_concurrency for name, db in settings.databases.items()},
        **{name: api.adaptive_concurrency for name, api in settings.apis.items()},
    }
    return {
        name: options.config()
        for name, options in chosen.items()
        if options is not None and options.enabled
    }


def _metrics_for(state: Any, resources: list[str]) -> AdmissionMetrics | None:
    collector = getattr(state, "metrics", None)
    if collector is None:
        return None
    # Multiprocess mode: samples go to the shared files, read back by the
    # collector's own registry; registering here too would count them twice.
    registry = None if collector.multiprocess_dir is not None else collector.registry
    return AdmissionMetrics(registry, resources)
