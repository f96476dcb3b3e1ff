"""``LatencyLimit``: how many operations at once, learned from their latency."""

from __future__ import annotations

import math
import time

from iogate.resilience.adaptive.config import (
    DEFAULT_MAX_QUEUE_TIME,
    MAX_DECREASE,
    MAX_WINDOW_SAMPLES,
    MIN_WINDOW_SAMPLES,
    QUEUE_TIME_RATIO,
    SLOW_START,
    AdaptiveConfig,
    Clock,
)

__all__ = ["LatencyLimit"]

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
