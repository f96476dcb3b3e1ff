"""Backoff, Retry-After, deadline-bounded retries and the retry budget.

Pure logic: every wait goes through an injected ``sleep`` that records it
and advances a fake clock, so nothing here really sleeps.
"""

from __future__ import annotations

import builtins

import pytest

from iogate.compat.retry import (
    execute_with_retry,
    resilient_api_operation,
    resilient_database_operation,
)
from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError, DatabaseConnectionError, QueryError, RateLimitedError
from iogate.core.result import Result
from iogate.resilience import retry as retry_module
from iogate.resilience.budget import RetryBudget
from iogate.resilience.retry import (
    RetryPolicy,
    backoff_delay,
    parse_retry_after,
    retry_results,
    set_testing,
)
from tests.fakes import FakeClock, RecordingSleep


def failing(error_type: str = "http_error", status: int | None = 503, **extra: float) -> Result:
    result = Result.fail("upstream answered 503", error_type, status_code=status)
    if "retry_after" in extra:
        result.retry_after = extra["retry_after"]
    return result


# -- backoff_delay ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 2.0), (7, 2.0), (60, 2.0)],
)
def test_backoff_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    top = backoff_delay(attempt, initial=0.1, maximum=2.0, random=lambda: 1.0)
    assert top == pytest.approx(ceiling)
    assert backoff_delay(attempt, initial=0.1, maximum=2.0, random=lambda: 0.0) == 0.0


def test_backoff_is_full_jitter_within_bounds() -> None:
    draws = iter([0.25, 0.5, 0.75])
    delays = [
        backoff_delay(n, initial=0.1, maximum=2.0, random=lambda: next(draws)) for n in (1, 2, 3)
    ]
    assert delays == pytest.approx([0.025, 0.1, 0.3])


def test_backoff_never_overflows() -> None:
    assert backoff_delay(10_000, initial=0.1, maximum=2.0, random=lambda: 1.0) == 2.0


# -- Retry-After -------------------------------------------------------------------


def test_parse_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=lambda: 1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412490.0) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None


# -- RetryPolicy ---------------------------------------------------------------------


def test_policy_coerce_accepts_config_shapes() -> None:
    assert RetryPolicy.coerce(None) == RetryPolicy()
    assert RetryPolicy.coerce(False).attempts == 1
    assert RetryPolicy.coerce(5).attempts == 5
    policy = RetryPolicy.coerce({"attempts": 4, "backoff_initial": 0.2, "backoff_max": 1.0})
    assert (policy.attempts, policy.backoff_initial, policy.backoff_max) == (4, 0.2, 1.0)
    with pytest.raises(ConfigError, match="unknown retry option"):
        RetryPolicy.coerce({"tries": 3})
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(backoff_initial=3.0, backoff_max=1.0)


# -- retry_results -------------------------------------------------------------------


async def test_retries_up_to_attempts_with_bounded_waits() -> None:
    sleep = RecordingSleep()
    calls = 0

    async def attempt() -> Result:
        nonlocal calls
        calls += 1
        return failing()

    result = await retry_results(
        attempt,
        policy=RetryPolicy(attempts=4, backoff_initial=0.1, backoff_max=0.3),
        should_retry=lambda r: not r.success,
        sleep=sleep,
        random=lambda: 0.999,
    )
    assert calls == 4
    assert result.status_code == 503
    assert len(sleep.waits) == 3
    for wait, ceiling in zip(sleep.waits, [0.1, 0.2, 0.3], strict=True):
        assert 0 <= wait <= ceiling
        assert wait == pytest.approx(ceiling * 0.999)


async def test_success_stops_retrying() -> None:
    outcomes = iter([failing(), Result.ok("fine")])
    sleep = RecordingSleep()

    async def attempt() -> Result:
        return next(outcomes)

    result = await retry_results(
        attempt, policy=RetryPolicy(), should_retry=lambda r: not r.success, sleep=sleep
    )
    assert result.success
    assert result.data == "fine"
    assert len(sleep.waits) == 1


async def test_not_retryable_result_is_returned_at_once() -> None:
    calls = 0

    async def attempt() -> Result:
        nonlocal calls
        calls += 1
        return failing("http_error", 400)

    result = await retry_results(
        attempt,
        policy=RetryPolicy(),
        should_retry=lambda r: r.status_code == 503,
        sleep=RecordingSleep(),
    )
    assert calls == 1
    assert result.status_code == 400


async def test_retry_after_is_honoured_instead_of_backoff() -> None:
    sleep = RecordingSleep()
    outcomes = iter([failing(retry_after=1.5), Result.ok()])

    async def attempt() -> Result:
        return next(outcomes)

    result = await retry_results(
        attempt,
        policy=RetryPolicy(),
        should_retry=lambda r: not r.success,
        deadline=Deadline(10.0),
        sleep=sleep,
    )
    assert result.success
    assert sleep.waits == [1.5]


async def test_retry_after_beyond_the_deadline_stops_and_returns_last_failure() -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    calls = 0

    async def attempt() -> Result:
        nonlocal calls
        calls += 1
        return failing(retry_after=30.0)

    result = await retry_results(
        attempt,
        policy=RetryPolicy(attempts=5),
        should_retry=lambda r: not r.success,
        deadline=Deadline(5.0, clock=clock),
        sleep=sleep,
    )
    assert calls == 1
    assert sleep.waits == []
    assert result.retry_after == 30.0


async def test_deadline_bounds_attempts_and_waits() -> None:
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    deadline = Deadline(1.0, clock=clock)

    async def attempt() -> Result:
        clock.now += 0.3  # each attempt takes 300 ms
        return failing()

    await retry_results(
        attempt,
        policy=RetryPolicy(attempts=50, backoff_initial=0.1, backoff_max=0.1),
        should_retry=lambda r: not r.success,
        deadline=deadline,
        sleep=sleep,
        random=lambda: 1.0,
    )
    # attempt 0.3 + wait 0.1 + attempt 0.3 + wait 0.1 + attempt 0.3 = 1.1: the
    # third attempt starts inside the deadline, no wait starts after it.
    assert clock.now - 1000.0 <= 1.0 + 0.3
    assert len(sleep.waits) <= 3


async def test_stop_checks_run_in_order_and_only_when_retrying() -> None:
    seen: list[str] = []

    def breaker_open() -> bool:
        seen.append("breaker")
        return False

    def budget_spent() -> bool:
        seen.append("budget")
        return True

    calls = 0

    async def attempt() -> Result:
        nonlocal calls
        calls += 1
        return failing()

    await retry_results(
        attempt,
        policy=RetryPolicy(attempts=3),
        should_retry=lambda r: not r.success,
        stop_checks=[breaker_open, budget_spent],
        sleep=RecordingSleep(),
    )
    assert calls == 1
    assert seen == ["breaker", "budget"]


async def test_testing_mode_removes_waits() -> None:
    sleep = RecordingSleep()

    async def attempt() -> Result:
        return failing()

    set_testing(True)
    try:
        await retry_results(attempt, policy=RetryPolicy(), should_retry=lambda r: True, sleep=sleep)
    finally:
        set_testing(False)
    assert sleep.waits == [0.0, 0.0]
    assert not retry_module.is_testing()


# -- retry budget ----------------------------------------------------------------------


def test_budget_keeps_retries_near_ratio_of_requests() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, reserve=10, min_per_second=1.0, clock=clock)
    retries = 0
    for _ in range(1000):
        budget.deposit()
        # every request would like two retries
        retries += sum(budget.try_withdraw() for _ in range(2))
    assert retries <= 10 + 0.2 * 1000 + 1
    assert retries >= 0.2 * 1000 - 1
    assert budget.denied > 0


def test_budget_reserve_refills_over_time() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, reserve=2, min_per_second=1.0, clock=clock)
    assert budget.try_withdraw()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.now += 1.0
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.now += 100.0
    assert budget.balance == pytest.approx(2.0)  # capped at the reserve


# -- seed helpers -------------------------------------------------------------------------


async def test_execute_with_retry_retries_exceptions_and_failed_results() -> None:
    sleep = RecordingSleep()
    outcomes: list[object] = [DatabaseConnectionError("down"), failing(), Result.ok(7)]

    async def operation() -> Result:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, Result)
        return outcome

    result = await execute_with_retry(operation, max_retries=3, delay=1.0, sleep=sleep)
    assert result.success
    assert result.data == 7
    assert len(sleep.waits) == 2
    assert 0 <= sleep.waits[0] <= 1.0
    assert 0 <= sleep.waits[1] <= 2.0


async def test_execute_with_retry_returns_last_failed_result() -> None:
    calls = 0

    async def operation() -> Result:
        nonlocal calls
        calls += 1
        return failing()

    result = await execute_with_retry(operation, max_retries=3, sleep=RecordingSleep())
    assert calls == 3
    assert not result.success


async def test_execute_with_retry_reraises_last_exception_unwrapped() -> None:
    async def operation() -> Result:
        raise DatabaseConnectionError("still down")

    with pytest.raises(DatabaseConnectionError, match="still down"):
        await execute_with_retry(operation, max_retries=2, sleep=RecordingSleep())


async def test_resilient_database_operation_retries_only_transient() -> None:
    set_testing(True)
    try:
        calls = 0

        async def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise builtins.TimeoutError
            return "done"

        assert await resilient_database_operation(flaky) == "done"
        assert calls == 3

        calls = 0

        async def broken(sql: str) -> str:
            nonlocal calls
            calls += 1
            raise QueryError(f"syntax error in {sql}")

        with pytest.raises(QueryError):
            await resilient_database_operation(broken, "SELEC 1")
        assert calls == 1
    finally:
        set_testing(False)


async def test_resilient_api_operation_retries_timeouts_and_rate_limits() -> None:
    set_testing(True)
    try:
        outcomes: list[object] = [
            RateLimitedError("slow down"),
            Result.fail("t", "timeout"),
            Result.ok("yes"),
        ]

        async def call() -> object:
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        result = await resilient_api_operation(call)
        assert isinstance(result, Result)
        assert result.data == "yes"

        calls = 0

        async def not_found() -> Result:
            nonlocal calls
            calls += 1
            return Result.fail("404", "http_error", status_code=404)

        assert not (await resilient_api_operation(not_found)).success
        assert calls == 1
    finally:
        set_testing(False)


async def test_execute_with_retry_accepts_the_seeds_lambda() -> None:
    outcomes = [failing(), Result.ok("second")]

    async def operation(tag: str) -> Result:
        return outcomes.pop(0)

    result = await execute_with_retry(
        lambda: operation("api"), max_retries=3, delay=1.0, sleep=RecordingSleep()
    )
    assert result.data == "second"
