"""A circuit breaker per resource, with an injectable clock.

    CLOSED --(N consecutive failures, or failure ratio over the window)--> OPEN
    OPEN   --(recovery_timeout elapsed)--------------------------------> HALF_OPEN
    HALF_OPEN --(half_open_max_calls probes all succeed)---------------> CLOSED
    HALF_OPEN --(any probe fails)--------------------------------------> OPEN

While OPEN, ``acquire()`` raises ``CircuitOpenError`` (with ``retry_after``)
without the caller touching the resource. HALF_OPEN admits at most
``half_open_max_calls`` probes; everyone else still fails fast.

Each call gets a *generation* ticket from ``acquire()``; an outcome reported
with a ticket from an earlier state (a slow call that started before the
breaker opened) is ignored, so it cannot close or re-open the wrong state.

Peers (other gateway processes guarding the same resource) may share their
openings: ``on_open`` is called when this breaker opens on its own evidence,
and ``open_for_peer(duration)`` lets a peer's opening open it. Each breaker
still decides for itself: a peer's opening counts only while this breaker is
CLOSED (so it is honoured at most once per open period, and never extends
one), lasts at most this breaker's own ``recovery_timeout``, and ends in this
breaker's own half-open probe. When that probe succeeds, the peer was wrong
about this process's path to the resource, and peer openings are ignored for
the next ``recovery_timeout``: a peer that keeps failing cannot hold this
breaker open for more than half of the time.

Written here rather than taken from a library: pybreaker, circuitbreaker and
aiobreaker count consecutive failures only; purgatory offers a threshold and
an open TTL around raised exceptions, while iogate's failures are Results and
need a failure-ratio window, bounded half-open probes and an injectable
clock (see docs/apis-and-resilience.md).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from iogate.core.errors import CircuitOpenError, ConfigError

__all__ = [
    "DEFAULT_FAILURE_RATIO",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_HALF_OPEN_MAX_CALLS",
    "DEFAULT_MINIMUM_CALLS",
    "DEFAULT_RECOVERY_TIMEOUT",
    "DEFAULT_WINDOW",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerConfig",
]

DEFAULT_FAILURE_THRESHOLD = 5
DEFAULT_RECOVERY_TIMEOUT = 5.0
DEFAULT_FAILURE_RATIO = 0.5
DEFAULT_WINDOW = 10.0
DEFAULT_MINIMUM_CALLS = 20
DEFAULT_HALF_OPEN_MAX_CALLS = 1

logger = logging.getLogger("iogate.resilience")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_CLOSED = BreakerState.CLOSED


@dataclass(frozen=True, kw_only=True, slots=True)
class CircuitBreakerConfig:
    """``failure_ratio=None`` disables the ratio rule (consecutive only)."""

    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    recovery_timeout: float = DEFAULT_RECOVERY_TIMEOUT
    failure_ratio: float | None = DEFAULT_FAILURE_RATIO
    window: float = DEFAULT_WINDOW
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ConfigError("circuit_breaker.failure_threshold must be at least 1")
        if self.recovery_timeout <= 0:
            raise ConfigError("circuit_breaker.recovery_timeout must be positive")
        if self.failure_ratio is not None and not 0 < self.failure_ratio <= 1:
            raise ConfigError("circuit_breaker.failure_ratio must be in (0, 1]")
        if self.window <= 0:
            raise ConfigError("circuit_breaker.window must be positive")
        if self.minimum_calls < 1 or self.half_open_max_calls < 1:
            raise ConfigError(
                "circuit_breaker.minimum_calls and half_open_max_calls must be at least 1"
            )

    @classmethod
    def coerce(
        cls, value: CircuitBreakerConfig | Mapping[str, Any] | bool | None
    ) -> CircuitBreakerConfig | None:
        """A table from a config file, ``true`` for defaults, ``false`` for none."""
        if isinstance(value, CircuitBreakerConfig):
            return value
        if value is None or value is True:
            return cls()
        if value is False:
            return None
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(
                    f"unknown circuit_breaker option(s): {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(known))})"
                )
            return cls(**value)
        raise ConfigError(
            f"circuit_breaker must be a table or a boolean, not {type(value).__name__}"
        )


class _Window:
    """Calls and failures per second over the last ``window`` seconds."""

    __slots__ = ("_calls", "_failures", "_seconds", "_size", "slot", "start", "until")

    def __init__(self, window: float) -> None:
        self._size = max(1, math.ceil(window))
        self._seconds = [-1] * self._size
        self._calls = [0] * self._size
        self._failures = [0] * self._size
        # The clock readings of the second last added to, and its slot: a
        # success in that second is counted without int() or the slot check
        # (CircuitBreaker.record_success). Empty until a positive second.
        self.start = self.until = 0.0
        self.slot = 0

    def add(self, now: float, failed: bool) -> None:
        second = int(now)
        slot = second % self._size
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._calls[slot] = 0
            self._failures[slot] = 0
        if second > 0:
            self.start, self.until, self.slot = float(second), second + 1.0, slot
        self._calls[slot] += 1
        if failed:
            self._failures[slot] += 1

    def totals(self, now: float) -> tuple[int, int]:
        second = int(now)
        calls = failures = 0
        for slot in range(self._size):
            if second - self._size < self._seconds[slot] <= second:
                calls += self._calls[slot]
                failures += self._failures[slot]
        return calls, failures

    def clear(self) -> None:
        self._seconds = [-1] * self._size
        self.start = self.until = 0.0


class CircuitBreaker:
    """One breaker guarding one resource; not thread-safe (one event loop)."""

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        name: str = "resource",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or CircuitBreakerConfig()
        self.name = name
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._consecutive_failures = 0
        self._opened_at = 0.0
        # How long the current open period lasts: recovery_timeout, or less
        # when a peer's shorter opening was honoured.
        self._open_for = self.config.recovery_timeout
        self._opened_by_peer = False
        self._peer_quiet_until = -math.inf
        self._probes_started = 0
        self._probes_succeeded = 0
        self._window = _Window(self.config.window)
        self.times_opened = 0
        self.rejected = 0
        self.peer_openings = 0  # peers' openings honoured
        # Called when this breaker opens on its own evidence (not a peer's).
        self.on_open: Callable[[CircuitBreaker], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.name!r} state={self.state.value} "
            f"consecutive_failures={self._consecutive_failures} opened={self.times_opened}>"
        )

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._open_for:
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self._open_for - self._clock())
        return 0.0

    def allows(self) -> bool:
        """Would ``acquire()`` succeed now? Takes nothing."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self._probes_started < self.config.half_open_max_calls
        return False

    def acquire(self) -> int:
        """Admit one call or raise ``CircuitOpenError``; returns its ticket."""
        if self._state is _CLOSED:
            # Every call of a healthy upstream comes here: no property, no
            # clock (only an open breaker's state depends on the time).
            return self._generation
        state = self.state
        if state is BreakerState.CLOSED:
            return self._generation
        if (
            state is BreakerState.HALF_OPEN
            and self._probes_started < self.config.half_open_max_calls
        ):
            self._probes_started += 1
            return self._generation
        self.rejected += 1
        retry_after = self.retry_after() if state is BreakerState.OPEN else 1.0
        raise CircuitOpenError(
            f"{self.name}: circuit is {state.value}; failing fast",
            retry_after=round(max(retry_after, 0.001), 3),
        )

    def record_success(self, ticket: int) -> None:
        if ticket != self._generation:
            return
        if self._state is _CLOSED:
            self._consecutive_failures = 0
            # _Window.add(now, failed=False), inlined for a second already
            # counted in: once per healthy call.
            window = self._window
            now = self._clock()
            if window.start <= now < window.until:
                window._calls[window.slot] += 1
            else:
                window.add(now, failed=False)
        elif self._state is BreakerState.HALF_OPEN:
            self._probes_succeeded += 1
            if self._probes_succeeded >= self.config.half_open_max_calls:
                self._transition(BreakerState.CLOSED)

    def record_failure(self, ticket: int) -> None:
        if ticket != self._generation:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.OPEN)
            return
        if self._state is not BreakerState.CLOSED:
            return
        now = self._clock()
        self._consecutive_failures += 1
        self._window.add(now, failed=True)
        if self._consecutive_failures >= self.config.failure_threshold or self._ratio_tripped(now):
            self._transition(BreakerState.OPEN)

    def release(self, ticket: int) -> None:
        """A call ended without a verdict (cancelled): free its probe slot."""
        if ticket == self._generation and self._state is BreakerState.HALF_OPEN:
            self._probes_started = max(0, self._probes_started - 1)

    def open_for_peer(self, duration: float) -> bool:
        """Open because a peer's breaker for the same resource opened; True if honoured.

        Honoured only while CLOSED and outside the quiet time that follows a
        peer's opening refuted by this breaker's own probe; the open period
        lasts ``duration`` capped at this breaker's ``recovery_timeout``.
        ``on_open`` is not called: the opening is the peer's, not news.
        """
        if duration <= 0 or self.state is not BreakerState.CLOSED:
            return False
        if self._clock() < self._peer_quiet_until:
            return False
        self._transition(
            BreakerState.OPEN, open_for=min(duration, self.config.recovery_timeout), by_peer=True
        )
        self.peer_openings += 1
        return True

    def snapshot(self) -> dict[str, Any]:
        calls, failures = self._window.totals(self._clock())
        return {
            "state": self.state.value,
            "consecutive_failures": self._consecutive_failures,
            "window_calls": calls,
            "window_failures": failures,
            "times_opened": self.times_opened,
            "rejected": self.rejected,
            "retry_after": round(self.retry_after(), 3),
            "peer_openings": self.peer_openings,
        }

    def _ratio_tripped(self, now: float) -> bool:
        ratio = self.config.failure_ratio
        if ratio is None:
            return False
        calls, failures = self._window.totals(now)
        return calls >= self.config.minimum_calls and failures / calls >= ratio

    def _transition(
        self, state: BreakerState, *, open_for: float | None = None, by_peer: bool = False
    ) -> None:
        self._state = state
        self._generation += 1
        self._probes_started = 0
        self._probes_succeeded = 0
        if state is BreakerState.OPEN:
            self._opened_at = self._clock()
            self._open_for = self.config.recovery_timeout if open_for is None else open_for
            self._opened_by_peer = by_peer
            self.times_opened += 1
            if not by_peer and self.on_open is not None:
                try:
                    self.on_open(self)
                except Exception:  # a listener must not break the call that tripped it
                    logger.exception("circuit breaker %r: on_open listener failed", self.name)
        elif state is BreakerState.CLOSED:
            if self._opened_by_peer:  # our probe refuted the peer's opening
                self._peer_quiet_until = self._clock() + self.config.recovery_timeout
                self._opened_by_peer = False
            self._consecutive_failures = 0
            self._window.clear()
