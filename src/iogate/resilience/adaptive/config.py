"""The knobs of adaptive concurrency (``AdaptiveConfig``) and its vocabularies."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from iogate.core.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_TIME",
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_TOLERANCE",
    "DEFAULT_WINDOW",
    "QUEUE_TIME_RATIO",
    "AdaptiveConfig",
    "Clock",
    "Priority",
    "RefusalReason",
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
