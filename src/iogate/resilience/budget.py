"""A retry budget: retries stay within a fixed share of requests.

Per-request retry limits multiply load on an upstream that is already
failing (3 attempts = 3x the traffic exactly when it hurts most). A budget
(the idea of Finagle's ``RetryBudget`` and gRPC's retry throttling) bounds
retries across all requests instead: every request deposits ``ratio`` of a
token, every retry spends a whole one.

A budget made of deposits alone could never retry the first requests of a
new or quiet client, so it also holds a ``reserve``: up to ``reserve``
tokens in all (a new budget starts full; deposits beyond the current token
refill the reserve, so a long healthy period banks no more than that). The
reserve is a loan, not a gift: a retry it pays for is owed, and the next
deposits repay it before they pay for anything else. Against an upstream
that fails every request, the retries over its first ``n`` requests are
therefore at most ``max(reserve, ratio * n)`` from a new budget (one more
when a deposited token was waiting), never ``reserve + ratio * n``: from
``n = reserve / ratio`` (50 requests by default) on, attempts are at most
``1 + ratio`` times the requests, over the whole run and over every window
of that many requests. Time refills nothing unless ``min_per_second`` says
so; a time refill pays for retries no request deposited, so it lifts a slow
client above ``1 + ratio``.

``deposit()`` once per request, when its first attempt ends (as
``AsyncAPIManager`` does), then ``try_withdraw()`` per retry: a request's
own deposit is then in before it asks. One budget is shared by every request
to one upstream in one process; its methods never await, so asyncio tasks
cannot interleave inside them. The clock is injectable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from iogate.core.errors import ConfigError

__all__ = ["DEFAULT_MIN_PER_SECOND", "DEFAULT_RESERVE", "DEFAULT_RETRY_RATIO", "RetryBudget"]

DEFAULT_RETRY_RATIO = 0.2
DEFAULT_RESERVE = 10.0
DEFAULT_MIN_PER_SECOND = 0.0
# Five deposits of 0.2 add up to 0.9999999999999999 in binary floating point.
_EPSILON = 1e-9


class RetryBudget:
    """Token account shared by every request to one upstream."""

    __slots__ = (
        "_clock",
        "_earned",
        "_last_refill",
        "_owed",
        "_reserve_left",
        "denied",
        "min_per_second",
        "ratio",
        "requests",
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
        # Deposits not spent yet, up to one token; beyond that they refill
        # the reserve. ``_earned + _reserve_left`` never exceeds ``reserve``.
        self._earned = 0.0
        self._reserve_left = reserve
        # Tokens lent by the reserve that deposits have not paid back yet.
        self._owed = 0.0
        self._last_refill = clock()
        self.requests = 0
        self.retries = 0
        self.denied = 0

    def __repr__(self) -> str:
        return (
            f"<RetryBudget balance={self.balance:.2f} owed={self._owed:.2f} "
            f"ratio={self.ratio} requests={self.requests} retries={self.retries} "
            f"denied={self.denied}>"
        )

    @property
    def balance(self) -> float:
        """Retries that could be paid for now."""
        self._refill()
        return self._earned + self._reserve_left

    def deposit(self) -> None:
        """One request was made (its first attempt)."""
        self.requests += 1
        amount = self.ratio
        owed = self._owed
        if owed > 0.0:
            # A loan from the reserve is repaid before anything else is paid for.
            if amount <= owed:
                self._owed = owed - amount
                return
            self._owed = 0.0
            amount -= owed
        # At most ``reserve`` tokens in all, so that no client, new or long
        # healthy, has more than the reserve to spend when an outage begins.
        # (``_cap()`` inlined: this runs once per request.)
        reserve = self.reserve
        room = (reserve if reserve > 1.0 else 1.0) - self._earned - self._reserve_left
        if room <= 0.0:
            return
        earned = self._earned + min(amount, room)
        if earned > 1.0:
            # A whole token nobody spent: the upstream is answering. Kept in
            # the reserve, where spending it is a loan like any other.
            self._reserve_left += earned - 1.0
            earned = 1.0
        self._earned = earned

    def try_withdraw(self) -> bool:
        """Take a token for one retry; False when the budget is spent."""
        if self._earned >= 1.0 - _EPSILON:
            self._earned = max(0.0, self._earned - 1.0)
            self.retries += 1
            return True
        if self.min_per_second:
            self._refill()
        if self._reserve_left >= 1.0 - _EPSILON:
            self._reserve_left = max(0.0, self._reserve_left - 1.0)
            self._owed += 1.0
            self.retries += 1
            return True
        self.denied += 1
        return False

    def snapshot(self) -> dict[str, float | int]:
        return {
            "balance": round(self.balance, 3),
            "owed": round(self._owed, 3),
            "ratio": self.ratio,
            "requests": self.requests,
            "retries": self.retries,
            "denied": self.denied,
        }

    def _cap(self) -> float:
        return max(self.reserve, 1.0)

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last_refill
        self._last_refill = now
        room = self._cap() - self._earned - self._reserve_left
        if elapsed > 0 and self.min_per_second > 0 and room > 0:
            self._reserve_left += min(room, elapsed * self.min_per_second)
