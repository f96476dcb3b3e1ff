"""A retry budget: retries stay near a fixed share of requests.

Per-request retry limits multiply load on an upstream that is already
failing (3 attempts = 3x the traffic exactly when it hurts most). A budget
(the idea of Finagle's ``RetryBudget`` and gRPC's retry throttling) bounds
retries across all requests instead: every request deposits ``ratio`` of a
token, every retry withdraws a whole one. While an upstream fails, retries
therefore settle at ``ratio`` x requests (about 20 % by default), and a small
reserve refilled over time (``min_per_second`` up to ``reserve``) lets a
quiet API still retry an occasional blip. The clock is injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from iogate.core.errors import ConfigError

__all__ = ["DEFAULT_RETRY_RATIO", "RetryBudget"]

DEFAULT_RETRY_RATIO = 0.2
DEFAULT_RESERVE = 10.0
DEFAULT_MIN_PER_SECOND = 1.0


class RetryBudget:
    """Token account shared by every request to one upstream."""

    __slots__ = (
        "_balance",
        "_clock",
        "_last_refill",
        "denied",
        "min_per_second",
        "ratio",
        "reserve",
        "retries",
    )

    def __init__(
        self,
        *,
        ratio: float = DEFAULT_RETRY_RATIO,
        reserve: float = DEFAULT_RESERVE,
        min_per_second: float = DEFAULT_MIN_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= ratio <= 1:
            raise ConfigError(f"retry budget ratio must be between 0 and 1, got {ratio}")
        if reserve < 0 or min_per_second < 0:
            raise ConfigError("retry budget reserve and min_per_second must not be negative")
        self.ratio = ratio
        self.reserve = reserve
        self.min_per_second = min_per_second
        self._clock = clock
        self._balance = reserve
        self._last_refill = clock()
        self.retries = 0
        self.denied = 0

    def __repr__(self) -> str:
        return (
            f"<RetryBudget balance={self._balance:.2f} ratio={self.ratio} "
            f"retries={self.retries} denied={self.denied}>"
        )

    @property
    def balance(self) -> float:
        self._refill()
        return self._balance

    def deposit(self) -> None:
        """One request was made (its first attempt)."""
        # Deposits are capped so a long healthy period cannot bank a retry
        # storm for the next outage.
        self._balance = min(self._balance + self.ratio, self._cap())

    def try_withdraw(self) -> bool:
        """Take a token for one retry; False when the budget is spent."""
        self._refill()
        if self._balance >= 1.0:
            self._balance -= 1.0
            self.retries += 1
            return True
        self.denied += 1
        return False

    def snapshot(self) -> dict[str, float | int]:
        return {
            "balance": round(self.balance, 3),
            "ratio": self.ratio,
            "retries": self.retries,
            "denied": self.denied,
        }

    def _cap(self) -> float:
        return max(self.reserve, 1.0)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last_refill
        self._last_refill = now
        if elapsed > 0 and self.min_per_second > 0 and self._balance < self.reserve:
            self._balance = min(self.reserve, self._balance + elapsed * self.min_per_second)
