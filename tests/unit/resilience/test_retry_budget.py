"""The retry budget, with an injected clock: the ratio, the reserve's edges, concurrency.

The promise (docs/reliability.md, "APIs"): against an upstream that fails
every request, retries over any ``n`` requests stay within
``max(reserve, ratio * n)`` -- the reserve is a loan repaid from later
deposits, never an allowance on top of the ratio -- so attempts are at most
1.2x the requests over the whole run and over every window of 50 requests or
more. Time alone refills nothing unless ``min_per_second`` says so.
"""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from iogate.core.errors import ConfigError
from iogate.resilience.budget import RetryBudget
from tests.fakes import FakeClock

RETRIES_WANTED = 2  # the default policy: 3 attempts, so up to 2 retries per request


def failing_run(budget: RetryBudget, requests: int) -> list[int]:
    """Each request fails and asks for its retries; the running total of retries granted."""
    totals: list[int] = []
    granted = 0
    for _ in range(requests):
        budget.deposit()
        for _ in range(RETRIES_WANTED):
            if not budget.try_withdraw():
                break
            granted += 1
        totals.append(granted)
    return totals


def window_retries(totals: list[int], start: int, size: int) -> int:
    before = totals[start - 1] if start else 0
    return totals[start + size - 1] - before


# -- the ratio ---------------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "reserve"), [(0.2, 10.0), (0.2, 3.0), (0.1, 10.0), (0.5, 2.0)])
def test_retries_over_every_prefix_stay_within_the_reserve_or_the_ratio(
    ratio: float, reserve: float
) -> None:
    budget = RetryBudget(ratio=ratio, reserve=reserve, clock=FakeClock())
    totals = failing_run(budget, 2000)
    for n, granted in enumerate(totals, start=1):
        assert granted <= max(reserve, ratio * n) + 1e-9, (n, granted)
    # ... and it is a budget, not a ban: the ratio is used in full.
    assert totals[-1] >= ratio * 2000 - 1
    assert budget.retries == totals[-1]
    assert budget.requests == 2000


def test_every_window_of_fifty_requests_or_more_is_within_1_2_attempts_per_request() -> None:
    budget = RetryBudget(clock=FakeClock())  # defaults: ratio 0.2, reserve 10
    requests = 1500
    totals = failing_run(budget, requests)
    for size in (50, 100, 250, 1000):
        worst = max(window_retries(totals, a, size) for a in range(requests - size + 1))
        assert (size + worst) / size <= 1.2 + 1e-9, (size, worst)
    # A window whose size is not a multiple of 1/ratio can hold one retry
    # more than ratio * size: retries are whole, deposits are fifths.
    for size in (51, 137):
        worst = max(window_retries(totals, a, size) for a in range(requests - size + 1))
        assert worst <= math.floor(0.2 * size) + 1, (size, worst)


def test_the_whole_run_is_within_the_ratio_once_the_loan_is_repaid() -> None:
    budget = RetryBudget(clock=FakeClock())
    totals = failing_run(budget, 1000)
    assert totals[-1] <= 200
    assert budget.snapshot()["owed"] == 0


# -- the reserve's edges ---------------------------------------------------------------


def test_a_new_budget_lends_its_reserve_then_waits_for_the_loan_to_be_repaid() -> None:
    budget = RetryBudget(ratio=0.2, reserve=2, clock=FakeClock())
    granted_at: list[int] = []
    for request in range(1, 40):
        budget.deposit()
        for _ in range(RETRIES_WANTED):
            if budget.try_withdraw():
                granted_at.append(request)
    # Request 1 borrows both reserve tokens (its own deposit is not kept: a
    # new budget already holds all it may). Requests 2-11 repay the 2 tokens,
    # 12-16 earn the next one, and from then on every fifth request earns one.
    assert granted_at == [1, 1, 16, 21, 26, 31, 36]
    assert budget.denied > 0


def test_a_long_healthy_period_banks_no_more_than_the_reserve() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, reserve=10, clock=clock)
    for _ in range(10_000):
        budget.deposit()  # every request succeeds: nothing is spent
    assert budget.balance == pytest.approx(10.0)
    # The outage that follows gets the reserve once, as a loan: over its first
    # n requests, at most max(reserve, ratio * n) retries, plus the one
    # deposited token that may have been waiting.
    totals = failing_run(budget, 500)
    for n, granted in enumerate(totals, start=1):
        assert granted <= max(10, 0.2 * n) + 1, (n, granted)
    assert totals[-1] <= 0.2 * 500 + 1


def test_a_reserve_spent_on_a_blip_is_restored_by_the_requests_that_follow() -> None:
    budget = RetryBudget(ratio=0.2, reserve=3, clock=FakeClock())
    for _ in range(100):
        budget.deposit()
    assert [budget.try_withdraw() for _ in range(3)] == [True, True, True]
    assert not budget.try_withdraw()
    # 3 tokens owed (15 requests) and 3 to bank again (15 more).
    for _ in range(29):
        budget.deposit()
    assert budget.balance < 3.0
    budget.deposit()
    assert budget.balance == pytest.approx(3.0)


def test_time_alone_refills_nothing_by_default() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, reserve=2, clock=clock)
    assert budget.try_withdraw()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.now += 3600.0
    assert budget.balance == 0.0
    assert not budget.try_withdraw()


def test_min_per_second_refills_the_reserve_up_to_its_size() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, reserve=2, min_per_second=1.0, clock=clock)
    assert budget.try_withdraw()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.now += 0.999
    assert not budget.try_withdraw()
    clock.now += 0.001  # one second in all: exactly one token
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.now += 100.0
    assert budget.balance == pytest.approx(2.0)  # capped at the reserve


def test_a_zero_reserve_still_retries_at_the_ratio() -> None:
    budget = RetryBudget(ratio=0.2, reserve=0, clock=FakeClock())
    totals = failing_run(budget, 100)
    assert totals[3] == 0  # nothing to lend: the first retry is earned by 5 requests
    assert totals[4] == 1
    assert totals[-1] == 20


@pytest.mark.parametrize(
    "options", [{"ratio": -0.1}, {"ratio": 1.5}, {"reserve": -1}, {"min_per_second": -1}]
)
def test_invalid_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryBudget(**options)


# -- concurrency -------------------------------------------------------------------------


async def test_fifty_concurrent_callers_stay_within_the_bound_at_every_moment() -> None:
    """1,000 requests from 50 tasks whose steps interleave at random."""
    budget = RetryBudget(clock=FakeClock())
    rng = random.Random(1414)
    requests = iter(range(1000))
    violations: list[str] = []

    def check() -> None:
        snap = budget.snapshot()
        if budget.retries > max(10, 0.2 * budget.requests) + 1e-9:
            violations.append(repr(budget))
        if not 0 <= snap["owed"] <= 10:
            violations.append(repr(budget))

    async def caller() -> None:
        for _ in requests:
            budget.deposit()
            check()
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)  # the first attempt is on the wire
            for _ in range(RETRIES_WANTED):
                granted = budget.try_withdraw()
                check()
                if not granted:
                    break
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)  # backoff, then the retry

    await asyncio.gather(*(caller() for _ in range(50)))
    assert violations == []
    assert budget.requests == 1000
    assert 190 <= budget.retries <= 200


async def test_waves_of_fifty_concurrent_requests_each_stay_within_1_2() -> None:
    """All 50 are in flight before any fails, and each deposits when its
    first attempt ends (as the API manager does): each wave is bounded on its
    own, and the ratio is used in full."""
    budget = RetryBudget(clock=FakeClock())
    per_wave: list[int] = []
    for _ in range(20):
        before = budget.retries

        async def request() -> None:
            await asyncio.sleep(0)  # every first attempt is on the wire
            budget.deposit()
            for _ in range(RETRIES_WANTED):
                if not budget.try_withdraw():
                    return
                await asyncio.sleep(0)

        await asyncio.gather(*(request() for _ in range(50)))
        per_wave.append(budget.retries - before)
    assert all(retries <= 10 for retries in per_wave), per_wave
    assert sum(per_wave) <= 200
    assert sum(per_wave) >= 180  # the ratio is used, not starved
