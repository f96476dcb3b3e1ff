"""Adaptive concurrency: a latency-driven limit on concurrent operations.

A resource (a database, an API) serves some number of operations at once
before each one starts waiting for the others: connections in a pool, cores
of a database server, a rate an upstream sustains. Past that knee, more
concurrency only adds queueing -- latency grows, throughput does not. A fixed
limit must be guessed and goes stale; this one is learned from latency, in
the family of TCP Vegas, Netflix's concurrency-limits and Envoy's adaptive
concurrency filter:

- completions are sampled in windows (at least ``window`` seconds and
  ``min_samples`` operations, fewer for small limits: 3 per slot, at least
  5), leaving out operations admitted before the limit last moved; each
  window's median latency is compared with the **baseline**, the median
  latency of the resource when it is not queueing;
- above ``tolerance`` x baseline, the resource is queueing: the limit is cut
  in proportion (latency grows with the queue, so ``limit * target / latency``
  aims at the target at once; never by more than half per window);
- near the baseline, and only if the limit actually held work back in that
  window, it grows: x1.5 until the first cut (a "slow start" from
  ``initial_limit``, ``min_limit`` by default), then a slot at a time
  (log10 of the limit for large limits, as Vegas);
- between the two it holds.

The baseline is learned at low concurrency: the first window, and any window
that ran with no more than ``min_limit`` operations at once, sets it; a lower
median lowers it. A resource that became slower for good (bigger data, a
heavier query mix) is first taken for an overloaded one: the limit falls to
``min_limit``, where the latency measured is no-load latency again, which
resets the baseline -- a probe that happens only when it is needed, instead
of Envoy's periodic one.

Past the limit, work waits in a bounded queue ordered by :class:`Priority`
(interactive before normal before batch; first come, first served within
one): at most ``max_queue`` waiters, and at most the **queue-time cap** each:
``max_queue_time`` when given, else a quarter of the baseline latency (at
most ``DEFAULT_MAX_QUEUE_TIME``), so a waiter never waits longer than a
fraction of what the operation itself takes. A request is refused at once,
without queueing, when the queue is full (a higher-priority arrival takes
the place of the newest lowest-priority waiter instead) or when its expected
wait exceeds the cap: with ``slots`` operations running, the first of them
ends after about ``latency / (slots + 1)``, so the k-th in line waits about
``k`` times that.

Everything here is bookkeeping on an injected clock, with no I/O and no
event loop: :class:`ConcurrencyLimiter` answers each request with a
:class:`Permit`, a :class:`Waiter` (to be woken through ``on_ready``) or a
:class:`Refusal`. ``iogate.gateway.admission`` puts it on an event loop.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iogate.core.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_TIME",
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_TOLERANCE",
    "DEFAULT_WINDOW",
    "QUEUE_TIME_RATIO",
    "AdaptiveConfig",
    "ConcurrencyLimiter",
    "LatencyLimit",
    "Permit",
    "Priority",
    "Refusal",
    "RefusalReason",
    "Waiter",
]

DEFAULT_MIN_LIMIT = 1
DEFAULT_MAX_LIMIT = 200
DEFAULT_MAX_QUEUE = 100
DEFAULT_MAX_QUEUE_TIME = 1.0
DEFAULT_TOLERANCE = 1.25
DEFAULT_WINDOW = 0.1
DEFAULT_MIN_SAMPLES = 20
DEFAULT_LATENCY_FLOOR = 0.0005
# A window closes early past this many samples (the median sorts them),
# and never with fewer than this many.
MAX_WINDOW_SAMPLES = 1000
MIN_WINDOW_SAMPLES = 5
# The queue-time cap is at most this share of the baseline latency.
QUEUE_TIME_RATIO = 0.25
# The deepest cut in one window.
MAX_DECREASE = 0.5
# Growth per window before the first cut: x1.5 overshoots a knee by half at
# most (x2 doubled the queue, and the latency, for a window).
SLOW_START = 1.5

Clock = Callable[[], float]


class Priority(enum.IntEnum):
    """Queue order: a lower value goes first."""

    INTERACTIVE = 0
    NORMAL = 1
    BATCH = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class RefusalReason(enum.StrEnum):
    QUEUE_FULL = "queue_full"  # max_queue waiters, or displaced by a higher priority
    QUEUE_TIME = "queue_time"  # the wait would pass (or passed) the queue-time cap


@dataclass(frozen=True, kw_only=True, slots=True)
class AdaptiveConfig:
    """How one resource's limit moves and how long work may queue."""

    min_limit: int = DEFAULT_MIN_LIMIT
    max_limit: int = DEFAULT_MAX_LIMIT
    initial_limit: int | None = None  # None: min_limit (slow start)
    max_queue: int = DEFAULT_MAX_QUEUE
    max_queue_time: float | None = None  # None: a quarter of the baseline, at most 1 s
    tolerance: float = DEFAULT_TOLERANCE
    window: float = DEFAULT_WINDOW
    min_samples: int = DEFAULT_MIN_SAMPLES
    # Latency differences below this are noise, not queueing (sub-ms operations).
    latency_floor: float = DEFAULT_LATENCY_FLOOR

    def __post_init__(self) -> None:
        if self.min_limit < 1:
            raise ConfigError(f"adaptive concurrency: min_limit must be >= 1, got {self.min_limit}")
        if self.max_limit < self.min_limit:
            raise ConfigError(
                f"adaptive concurrency: max_limit ({self.max_limit}) is below "
                f"min_limit ({self.min_limit})"
            )
        initial = self.initial_limit
        if initial is not None and not self.min_limit <= initial <= self.max_limit:
            raise ConfigError(
                f"adaptive concurrency: initial_limit ({initial}) must be between "
                f"min_limit ({self.min_limit}) and max_limit ({self.max_limit})"
            )
        if self.max_queue < 0:
            raise ConfigError(f"adaptive concurrency: max_queue must be >= 0, got {self.max_queue}")
        if self.max_queue_time is not None and not self.max_queue_time > 0:
            raise ConfigError("adaptive concurrency: max_queue_time must be > 0")
        if not self.tolerance > 1:
            raise ConfigError(f"adaptive concurrency: tolerance must be > 1, got {self.tolerance}")
        if not self.window > 0 or self.min_samples < 1 or self.latency_floor < 0:
            raise ConfigError("adaptive concurrency: window, min_samples must be positive")


# -- the limit -------------------------------------------------------------------------


class LatencyLimit:
    """The limit learned from latency samples (no queue, no waiting)."""

    __slots__ = (
        "_clock",
        "_max_inflight",
        "_samples",
        "_saturated",
        "_slow_start",
        "_window_start",
        "baseline",
        "config",
        "decreases",
        "generation",
        "increases",
        "latency",
        "limit",
    )

    def __init__(self, config: AdaptiveConfig, *, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        initial = config.initial_limit if config.initial_limit is not None else config.min_limit
        self.limit = float(initial)
        self.baseline: float | None = None  # no-load median latency, seconds
        self.latency: float | None = None  # last window's median latency
        self.increases = 0
        self.decreases = 0
        # Bumped when the slots change: samples of operations admitted under
        # an older limit describe that limit, not this one, and are left out.
        self.generation = 0
        self._slow_start = True
        self._samples: list[float] = []
        self._max_inflight = 0
        self._saturated = False
        self._window_start = clock()

    def __repr__(self) -> str:
        baseline = "?" if self.baseline is None else f"{self.baseline * 1000:.2f}ms"
        latency = "?" if self.latency is None else f"{self.latency * 1000:.2f}ms"
        return f"<LatencyLimit limit={self.limit:.2f} baseline={baseline} latency={latency}>"

    @property
    def slots(self) -> int:
        """The concurrency allowed now (the limit, rounded down)."""
        return max(self.config.min_limit, int(self.limit))

    def saturated(self) -> None:
        """A request found every slot taken: the limit is holding work back."""
        self._saturated = True

    def record(self, latency: float, inflight: int, generation: int | None = None) -> bool:
        """One completed operation that ran with ``inflight`` at its start
        (itself included) and was admitted in ``generation`` (None: this
        one); True when this closed a window and the limit may have moved."""
        if generation is not None and generation != self.generation:
            return False
        self._samples.append(latency)
        if inflight > self._max_inflight:
            self._max_inflight = inflight
        now = self._clock()
        count = len(self._samples)
        # Small limits complete few operations per window: fewer samples
        # then, or a limit of 1 on a 100 ms statement would wait 2 s to move.
        if count < max(MIN_WINDOW_SAMPLES, min(self.config.min_samples, 3 * self.slots)):
            return False
        if now - self._window_start < self.config.window and count < MAX_WINDOW_SAMPLES:
            return False
        before = self.slots
        self._update()
        if self.slots != before:
            self.generation += 1
        self._samples = []
        self._max_inflight = 0
        self._saturated = False
        self._window_start = now
        return True

    def _update(self) -> None:
        config = self.config
        self._samples.sort()
        median = self._samples[len(self._samples) // 2]
        self.latency = median
        unloaded = self._max_inflight <= config.min_limit
        if self.baseline is None or unloaded:
            self.baseline = median
        elif median < self.baseline:
            # Halfway down: one lucky window must not set the bar for ever.
            self.baseline = (self.baseline + median) / 2
        baseline = self.baseline
        floor = config.latency_floor
        target = baseline * config.tolerance + floor
        if median > target:
            # Latency grows with the queue: scale what actually ran by target/latency.
            ran = min(self.limit, float(max(self._max_inflight, config.min_limit)))
            self.limit = max(config.min_limit, ran * max(MAX_DECREASE, target / median))
            self._slow_start = False
            self.decreases += 1
        elif self._saturated and median <= baseline * (1 + config.tolerance) / 2 + floor / 2:
            grown = self.limit * SLOW_START if self._slow_start else self.limit + _step(self.limit)
            self.limit = min(float(config.max_limit), max(grown, self.limit + 1))
            self.increases += 1

    def queue_timeout(self) -> float:
        """The longest any request may wait for a slot."""
        if self.config.max_queue_time is not None:
            return self.config.max_queue_time
        if self.baseline is None:
            return DEFAULT_MAX_QUEUE_TIME
        return min(DEFAULT_MAX_QUEUE_TIME, QUEUE_TIME_RATIO * self.baseline)

    def expected_service(self) -> float | None:
        return self.latency if self.latency is not None else self.baseline


def _step(limit: float) -> float:
    """Additive growth after the first cut: a slot at a time near a small
    knee, faster for large limits (Vegas grows by log10)."""
    return max(1.0, math.log10(limit))


# -- admission -------------------------------------------------------------------------


class Permit:
    """A slot held by one operation; give it back with ``release``."""

    __slots__ = ("generation", "inflight", "priority", "released", "weight")

    def __init__(self, priority: Priority, weight: int, inflight: int, generation: int) -> None:
        self.priority = priority
        self.weight = weight
        self.inflight = inflight
        self.generation = generation
        self.released = False

    def __repr__(self) -> str:
        return f"<Permit {self.priority.label} weight={self.weight}>"


@dataclass(frozen=True, slots=True)
class Refusal:
    """No slot: answer at once (HTTP 503 + Retry-After)."""

    reason: RefusalReason
    priority: Priority
    limit: int
    queued: int


class Waiter:
    """A request in the queue; ``on_ready`` gets its Permit or Refusal."""

    __slots__ = ("enqueued_at", "on_ready", "outcome", "priority", "weight")

    def __init__(self, priority: Priority, weight: int, enqueued_at: float) -> None:
        self.priority = priority
        self.weight = weight
        self.enqueued_at = enqueued_at
        self.outcome: Permit | Refusal | None = None
        self.on_ready: Callable[[Permit | Refusal], None] | None = None

    def __repr__(self) -> str:
        return f"<Waiter {self.priority.label} weight={self.weight} outcome={self.outcome}>"


class ConcurrencyLimiter:
    """Admission for one resource: slots from a :class:`LatencyLimit`, a
    priority queue, and counters for ``/stats``."""

    def __init__(
        self, config: AdaptiveConfig, *, name: str = "", clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.config = config
        self.limit = LatencyLimit(config, clock=clock)
        self._clock = clock
        self.inflight = 0
        self.queued = 0
        # One FIFO per priority; an entry that left (timed out, cancelled)
        # stays until it reaches the front, flagged by its outcome.
        self._queues: tuple[deque[Waiter], ...] = tuple(deque() for _ in Priority)
        self.admitted = 0
        self.refused: dict[tuple[Priority, RefusalReason], int] = {}
        self.on_limit_change: Callable[[ConcurrencyLimiter], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<ConcurrencyLimiter {self.name!r} slots={self.limit.slots} inflight={self.inflight} "
            f"queued={self.queued} admitted={self.admitted} refused={sum(self.refused.values())}>"
        )

    # -- requests -----------------------------------------------------------------

    def try_acquire(
        self, priority: Priority = Priority.NORMAL, weight: int = 1
    ) -> Permit | Waiter | Refusal:
        """A Permit now, a Waiter to wait on, or a Refusal."""
        slots = self.limit.slots
        weight = max(1, min(weight, slots))
        now = self._clock()
        if self.queued:
            self._expire(now)
        ahead = self._weight_ahead(priority) if self.queued else 0
        if ahead == 0 and self.inflight + weight <= slots:
            return self._admit(priority, weight)
        self.limit.saturated()
        service = self.limit.expected_service()
        if service is not None:
            expected_wait = (ahead + weight) / (slots + 1) * service
            if expected_wait > self.limit.queue_timeout():
                return self._refusal(priority, RefusalReason.QUEUE_TIME)
        if self.queued >= self.config.max_queue and not self._displace(priority):
            return self._refusal(priority, RefusalReason.QUEUE_FULL)
        waiter = Waiter(priority, weight, now)
        self._queues[priority].append(waiter)
        self.queued += 1
        return waiter

    def release(self, permit: Permit, latency: float | None = None) -> None:
        """Give the slot back; ``latency`` (seconds) trains the limit, None
        (cancelled, or not one operation's latency) does not."""
        if permit.released:
            return
        permit.released = True
        self.inflight -= permit.weight
        moved = latency is not None and self.limit.record(
            latency, permit.inflight, permit.generation
        )
        if moved and self.on_limit_change is not None:
            self.on_limit_change(self)
        if self.queued:
            self._expire(self._clock())
            self._wake()

    def abandon(self, waiter: Waiter, *, refuse: bool = True) -> Permit | Refusal:
        """The waiter stops waiting: its time is up, or (``refuse=False``,
        not counted as a refusal) it was cancelled.

        Returns its Permit if a slot was handed to it meanwhile (the caller
        runs or releases it), else the QUEUE_TIME Refusal it leaves with."""
        if waiter.outcome is not None:
            return waiter.outcome
        self.queued -= 1
        if refuse:
            refusal = self._refusal(waiter.priority, RefusalReason.QUEUE_TIME)
        else:
            refusal = Refusal(RefusalReason.QUEUE_TIME, waiter.priority, self.limit.slots, 0)
        waiter.outcome = refusal
        # A waiter at the front that leaves may unblock the ones behind it.
        self._wake()
        return refusal

    def expire(self) -> None:
        """Refuse every waiter past the queue-time cap (also done on every call)."""
        if self.queued:
            self._expire(self._clock())

    # -- reading ------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        limit = self.limit
        refused: dict[str, int] = {}
        for (_, reason), count in self.refused.items():
            refused[reason.value] = refused.get(reason.value, 0) + count
        return {
            "limit": limit.slots,
            "inflight": self.inflight,
            "queued": self.queued,
            "baseline_ms": None if limit.baseline is None else round(limit.baseline * 1000, 3),
            "latency_ms": None if limit.latency is None else round(limit.latency * 1000, 3),
            "queue_timeout_ms": round(limit.queue_timeout() * 1000, 3),
            "admitted": self.admitted,
            "refused": refused,
            "min_limit": self.config.min_limit,
            "max_limit": self.config.max_limit,
        }

    # -- internals ----------------------------------------------------------------

    def _admit(self, priority: Priority, weight: int) -> Permit:
        self.inflight += weight
        self.admitted += 1
        return Permit(priority, weight, self.inflight, self.limit.generation)

    def _refusal(self, priority: Priority, reason: RefusalReason) -> Refusal:
        key = (priority, reason)
        self.refused[key] = self.refused.get(key, 0) + 1
        return Refusal(reason, priority, self.limit.slots, self.queued)

    def _weight_ahead(self, priority: Priority) -> int:
        """Queued weight that goes before a new request of ``priority``."""
        total = 0
        for queue in self._queues[: priority + 1]:
            for waiter in queue:
                if waiter.outcome is None:
                    total += waiter.weight
        return total

    def _displace(self, priority: Priority) -> bool:
        """Refuse the newest waiter of the lowest priority below ``priority``."""
        for lower in reversed(self._queues[priority + 1 :]):
            while lower:
                waiter = lower.pop()
                if waiter.outcome is None:
                    self.queued -= 1
                    self._settle(waiter, self._refusal(waiter.priority, RefusalReason.QUEUE_FULL))
                    return True
        return False

    def _expire(self, now: float) -> None:
        oldest = now - self.limit.queue_timeout()
        for queue in self._queues:
            while queue and (queue[0].outcome is not None or queue[0].enqueued_at < oldest):
                waiter = queue.popleft()
                if waiter.outcome is None:
                    self.queued -= 1
                    self._settle(waiter, self._refusal(waiter.priority, RefusalReason.QUEUE_TIME))

    def _wake(self) -> None:
        """Hand free slots to waiters, highest priority first, in order."""
        slots = self.limit.slots
        for queue in self._queues:
            while queue:
                waiter = queue[0]
                if waiter.outcome is not None:
                    queue.popleft()
                    continue
                weight = min(waiter.weight, slots)
                if self.inflight + weight > slots:
                    return  # nobody behind it, nor of a lower priority, may pass it
                queue.popleft()
                self.queued -= 1
                self._settle(waiter, self._admit(waiter.priority, weight))
            # This priority is empty: a lower one may use what is left.

    def _settle(self, waiter: Waiter, outcome: Permit | Refusal) -> None:
        waiter.outcome = outcome
        if waiter.on_ready is not None:
            waiter.on_ready(outcome)
