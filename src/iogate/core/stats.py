"""Per-resource statistics with bounded memory.

Latency percentiles come from a log-bucketed sketch (the DDSketch idea):
each observation increments the bucket ``ceil(log_gamma(x))``, so any quantile
is answered with a relative error of at most ``(gamma - 1) / (gamma + 1)``
(1 % here) in at most a few thousand buckets, whatever the number of
observations. Throughput over the last minute comes from one counter per
second in a 60-slot ring.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["LatencySketch", "OperationStats"]

_RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + _RELATIVE_ACCURACY) / (1 - _RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
# Recording runs once per operation: multiply by a precomputed factor rather
# than divide, and bind the math functions once.
_INV_LOG_GAMMA = 1.0 / _LOG_GAMMA
_MIN_MS = 1e-3  # below 1 microsecond everything shares one bucket
_MIN_INDEX = math.ceil(math.log(_MIN_MS) * _INV_LOG_GAMMA)
_log = math.log
_ceil = math.ceil


class LatencySketch:
    """Streaming quantile estimator over milliseconds, bounded memory."""

    __slots__ = ("_buckets", "count", "max", "min", "total")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, value_ms: float) -> None:
        index = _ceil(_log(value_ms) * _INV_LOG_GAMMA) if value_ms > _MIN_MS else _MIN_INDEX
        buckets = self._buckets
        buckets[index] = buckets.get(index, 0) + 1
        self.count += 1
        self.total += value_ms
        if value_ms < self.min:
            self.min = value_ms
        if value_ms > self.max:
            self.max = value_ms

    def quantile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen > rank:
                # Midpoint of the bucket (gamma^(i-1), gamma^i] in relative terms.
                estimate = 2 * _GAMMA**index / (_GAMMA + 1)
                return min(max(estimate, self.min), self.max)
        return self.max


class _Throughput:
    """Operations per second over the last 60 seconds, one slot per second.

    The current second is counted in a plain attribute and moved into the
    ring when the second changes, so counting one operation is a clock read,
    a comparison and an addition; ``OperationStats.record`` does that inline.
    """

    __slots__ = ("_clock", "_counts", "_seconds", "current", "second", "start", "until")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._counts = [0] * 60
        self._seconds = [-1] * 60
        self.second = -1  # the second ``current`` counts
        self.current = 0
        # The clock readings ``int()`` maps to ``second``: start <= now < until.
        # Comparing a reading with them costs less than ``int(now)`` (measured);
        # empty (0, 0) until a positive second is counted, so roll() decides.
        self.start = 0.0
        self.until = 0.0

    def roll(self, second: int) -> None:
        """Move the finished second into the ring and start counting ``second``."""
        if second != self.second:
            if self.second >= 0:
                slot = self.second % 60
                self._seconds[slot] = self.second
                self._counts[slot] = self.current
            self.second = second
            self.current = 0
        if second > 0:
            self.start, self.until = float(second), second + 1.0

    def per_second(self) -> float:
        now = int(self._clock())
        total = sum(
            count
            for second, count in zip(self._seconds, self._counts, strict=True)
            if now - 60 < second <= now and second != self.second
        )
        if now - 60 < self.second <= now:
            total += self.current
        return total / 60.0


class OperationStats:
    """Counts, errors by type, latency quantiles and recent throughput."""

    __slots__ = ("_clock", "_throughput", "count", "errors", "latency")

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.count = 0
        self.errors: Counter[str] = Counter()
        self.latency = LatencySketch()
        self._clock = clock
        self._throughput = _Throughput(clock)

    def record(self, duration_ms: float, error_type: str | None) -> None:
        """Called once per operation, so the sketch's ``add`` and the
        throughput tick are inlined here (one call frame each, measured)."""
        self.count += 1
        if error_type is not None:
            self.errors[error_type] += 1
        latency = self.latency  # LatencySketch.add, inlined
        index = _ceil(_log(duration_ms) * _INV_LOG_GAMMA) if duration_ms > _MIN_MS else _MIN_INDEX
        buckets = latency._buckets
        buckets[index] = buckets.get(index, 0) + 1
        latency.count += 1
        latency.total += duration_ms
        if duration_ms < latency.min:
            latency.min = duration_ms
        if duration_ms > latency.max:
            latency.max = duration_ms
        throughput = self._throughput
        now = self._clock()
        if not throughput.start <= now < throughput.until:
            throughput.roll(int(now))
        throughput.current += 1

    def snapshot(self) -> dict[str, Any]:
        failures = sum(self.errors.values())
        return {
            "count": self.count,
            "errors": failures,
            "errors_by_type": dict(self.errors),
            "success_rate": None if self.count == 0 else (self.count - failures) / self.count,
            "throughput_per_s": round(self._throughput.per_second(), 3),
            "latency_ms": {
                "p50": _round(self.latency.quantile(0.50)),
                "p95": _round(self.latency.quantile(0.95)),
                "p99": _round(self.latency.quantile(0.99)),
                "max": _round(self.latency.max if self.count else None),
                "mean": _round(self.latency.total / self.count if self.count else None),
            },
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
