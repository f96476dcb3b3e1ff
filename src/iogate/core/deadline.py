"""One deadline per request, bounding acquire, every attempt and every wait."""

from __future__ import annotations

import time
from collections.abc import Callable

from iogate.core.errors import OperationTimeoutError

__all__ = ["Deadline", "deadline_error"]

Clock = Callable[[], float]


class Deadline:
    """An absolute point in time on a monotonic clock; ``None`` budget = none."""

    __slots__ = ("_clock", "expires_at")

    def __init__(self, budget: float | None, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.expires_at = None if budget is None else clock() + budget

    @classmethod
    def never(cls) -> Deadline:
        """The deadline that never passes.

        It holds no state (no expiry, the clock is never read), so one
        instance serves every caller: no allocation on the hot path.
        """
        return _NEVER

    def remaining(self) -> float | None:
        if self.expires_at is None:
            return None
        left = self.expires_at - self._clock()
        return left if left > 0.0 else 0.0  # max(0.0, left) costs a builtin call

    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at - self._clock() <= 0.0

    def or_within(self, budget: float | None) -> Deadline:
        """This deadline, or when it has none, one ``budget`` seconds from now.

        How configured timeouts bound a call made without a deadline
        (``budget=None`` keeps it unbounded).
        """
        if self.expires_at is not None or budget is None:
            return self
        return Deadline(budget, clock=self._clock)

    def cap(self, timeout: float | None) -> float | None:
        """The smaller of ``timeout`` and what is left of the deadline."""
        remaining = self.remaining()
        if remaining is None:
            return timeout
        if timeout is None:
            return remaining
        return min(timeout, remaining)

    def __repr__(self) -> str:
        remaining = self.remaining()
        return "Deadline(none)" if remaining is None else f"Deadline(remaining={remaining:.3f}s)"


_NEVER = Deadline(None)


def deadline_error(
    what: str, *, budget: float | None = None, started: bool = True
) -> OperationTimeoutError:
    """The one message for a deadline that ended ``what`` (a query, a COMMIT...).

    ``started=False``: the deadline had passed before ``what`` began (nothing
    was sent); otherwise ``what`` was cut off, after ``budget`` seconds when
    that is known.
    """
    if not started:
        return OperationTimeoutError(f"deadline passed before {what} started")
    if budget is None:
        return OperationTimeoutError(f"{what} did not finish within the deadline")
    return OperationTimeoutError(f"{what} did not finish within the deadline ({budget:.3g}s)")
