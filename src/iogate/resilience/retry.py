"""Retries: capped attempts, full-jitter backoff, ``Retry-After``, one deadline.

tenacity is the engine (``AsyncRetrying``); this module supplies the pieces
iogate needs on top of it:

* ``RetryPolicy``: a frozen, keyword-only description of how to retry;
* ``backoff_delay``: the wait before attempt ``n + 1``, a pure function of
  ``n`` and a random draw ("full jitter": uniform in
  ``[0, min(backoff_max, backoff_initial * 2**(n-1))]``), so clients that
  failed together do not retry together;
* ``retry_results``: runs a Result-returning attempt until it succeeds, the
  caller says it must not be retried, attempts run out, the deadline would
  pass during the next wait, or an extra stop condition (breaker, retry
  budget) says no. The last Result is returned, never an exception.

``set_testing(True)`` removes every wait (as stamina's testing mode does), so
tests of retrying code need no real sleeps.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random as _random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import tenacity

from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError
from iogate.core.result import Result

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BACKOFF_INITIAL",
    "DEFAULT_BACKOFF_MAX",
    "DEFAULT_RETRY_STATUSES",
    "RetryPolicy",
    "backoff_delay",
    "is_testing",
    "parse_retry_after",
    "retry_after_first",
    "retry_results",
    "set_testing",
]

DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_INITIAL = 0.1
DEFAULT_BACKOFF_MAX = 2.0
DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})

Sleep = Callable[[float], Awaitable[None]]
Random = Callable[[], float]
StopCheck = Callable[[], bool]

_testing = False


def set_testing(enabled: bool) -> None:
    """Testing mode: every backoff and ``Retry-After`` wait becomes zero."""
    global _testing
    _testing = enabled


def is_testing() -> bool:
    return _testing


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How an operation is retried; ``attempts`` counts the first try too."""

    attempts: int = DEFAULT_ATTEMPTS
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    retry_statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"retry.attempts must be at least 1, got {self.attempts}")
        if self.backoff_initial < 0 or self.backoff_max < 0:
            raise ConfigError("retry backoff values must not be negative")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("retry.backoff_max must be at least retry.backoff_initial")

    @classmethod
    def coerce(cls, value: RetryPolicy | Mapping[str, Any] | bool | int | None) -> RetryPolicy:
        """Accept what a config file gives: a table, ``false`` (no retries), a count."""
        if isinstance(value, RetryPolicy):
            return value
        if value is None or value is True:
            return cls()
        if value is False:
            return cls(attempts=1)
        if isinstance(value, int):
            return cls(attempts=value)
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(
                    f"unknown retry option(s): {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(known))})"
                )
            options = dict(value)
            if "retry_statuses" in options:
                options["retry_statuses"] = frozenset(int(s) for s in options["retry_statuses"])
            return cls(**options)
        raise ConfigError(
            f"retry must be a table, a boolean or an integer, not {type(value).__name__}"
        )


def backoff_delay(
    attempt: int, *, initial: float, maximum: float, random: Random = _random.random
) -> float:
    """Full-jitter wait after failed attempt ``attempt`` (1-based)."""
    exponent = min(attempt - 1, 62)  # 2**62 already dwarfs any cap; avoids overflow
    ceiling = min(maximum, initial * math.ldexp(1.0, exponent))
    return ceiling * random()


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now())


class _Wait(tenacity.wait.wait_base):
    """Backoff, or the upstream's ``Retry-After`` when it gave one."""

    def __init__(self, policy: RetryPolicy, random: Random) -> None:
        self._policy = policy
        self._random = random

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        if _testing:
            return 0.0
        outcome = retry_state.outcome
        result = outcome.result() if outcome is not None and not outcome.failed else None
        if isinstance(result, Result) and result.retry_after is not None:
            return max(0.0, result.retry_after)
        return backoff_delay(
            retry_state.attempt_number,
            initial=self._policy.backoff_initial,
            maximum=self._policy.backoff_max,
            random=self._random,
        )


class _StopAtDeadline(tenacity.stop.stop_base):
    """Stop when the next wait would use up what is left of the deadline."""

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        remaining = self._deadline.remaining()
        if remaining is None:
            return False
        upcoming = retry_state.upcoming_sleep or 0.0
        return upcoming >= remaining


class _StopWhen(tenacity.stop.stop_base):
    def __init__(self, check: StopCheck) -> None:
        self._check = check

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._check()


def _last_result(retry_state: tenacity.RetryCallState) -> Result:
    # Called by tenacity when a stop condition ends the retries: the caller
    # gets the last attempt's Result, exactly as if it had not been retried.
    assert retry_state.outcome is not None
    result: Result = retry_state.outcome.result()
    return result


async def retry_results(
    attempt: Callable[[], Awaitable[Result]],
    *,
    policy: RetryPolicy,
    should_retry: Callable[[Result], bool],
    deadline: Deadline | None = None,
    stop_checks: Sequence[StopCheck] = (),
    sleep: Sleep = asyncio.sleep,
    random: Random = _random.random,
) -> Result:
    """Run ``attempt`` until done; return its last Result.

    ``stop_checks`` are evaluated in order, only once attempts and deadline
    allow another try, and only until one says stop: a check with a side
    effect (taking a retry-budget token) therefore runs only for a retry that
    will really happen when it is last.
    """
    # Fast path: most calls succeed first time, and tenacity's machinery
    # costs more than a loopback round trip's worth of CPU.
    first = await attempt()
    if policy.attempts == 1 or not should_retry(first):
        return first
    return await retry_after_first(
        first,
        attempt,
        policy=policy,
        should_retry=should_retry,
        deadline=deadline,
        stop_checks=stop_checks,
        sleep=sleep,
        random=random,
    )


async def retry_after_first(
    first: Result,
    attempt: Callable[[], Awaitable[Result]],
    *,
    policy: RetryPolicy,
    should_retry: Callable[[Result], bool],
    deadline: Deadline | None = None,
    stop_checks: Sequence[StopCheck] = (),
    sleep: Sleep = asyncio.sleep,
    random: Random = _random.random,
) -> Result:
    """Go on from a first attempt already run (and judged worth a retry).

    For callers that run their first attempt inline, so that the common
    case (no retry) builds no callable for this one. ``first`` is replayed
    to tenacity as its attempt 1, so attempt numbering, waits and stop
    checks are exactly those of :func:`retry_results`.
    """
    replay = [first]

    async def next_attempt() -> Result:
        return replay.pop() if replay else await attempt()

    stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(policy.attempts)
    if deadline is not None:
        stop = stop | _StopAtDeadline(deadline)
    for check in stop_checks:
        stop = stop | _StopWhen(check)
    retrying = tenacity.AsyncRetrying(
        stop=stop,
        wait=_Wait(policy, random),
        retry=tenacity.retry_if_result(should_retry),
        sleep=sleep,
        retry_error_callback=_last_result,
        reraise=True,
    )
    result: Result = await retrying(next_attempt)
    return result
