"""Circuit breaker states with an injected clock (no sleeping)."""

from __future__ import annotations

import pytest

from iogate.compat.retry import circuit_breaker_api_call, helper_breaker
from iogate.core.errors import CircuitOpenError, ConfigError
from iogate.core.result import Result
from iogate.resilience.breaker import BreakerState, CircuitBreaker, CircuitBreakerConfig
from tests.fakes import FakeClock


def make(clock: FakeClock, **options: object) -> CircuitBreaker:
    config = CircuitBreakerConfig(**{"failure_threshold": 3, "recovery_timeout": 5.0, **options})  # type: ignore[arg-type]
    return CircuitBreaker(config, name="api", clock=clock)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record_failure(breaker.acquire())


def test_opens_after_consecutive_failures_and_fails_fast() -> None:
    clock = FakeClock(500.0)
    breaker = make(clock)
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker)
    assert breaker.state is BreakerState.OPEN
    clock.now += 2.0
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.error_type == "circuit_open"
    assert info.value.retry_after == pytest.approx(3.0)
    assert breaker.rejected == 1
    assert not breaker.allows()


def test_success_resets_the_consecutive_count() -> None:
    breaker = make(FakeClock(500.0))
    fail(breaker, 2)
    breaker.record_success(breaker.acquire())
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


def test_half_open_admits_bounded_probes_then_closes() -> None:
    clock = FakeClock(500.0)
    breaker = make(clock, half_open_max_calls=2)
    fail(breaker, 3)
    clock.now += 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    first, second = breaker.acquire(), breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # a third concurrent probe is refused
    breaker.record_success(first)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_success(second)
    assert breaker.state is BreakerState.CLOSED
    breaker.acquire()  # closed again: everyone passes


def test_failed_probe_reopens_for_another_period() -> None:
    clock = FakeClock(500.0)
    breaker = make(clock)
    fail(breaker, 3)
    clock.now += 5.0
    probe = breaker.acquire()
    breaker.record_failure(probe)
    assert breaker.state is BreakerState.OPEN
    assert breaker.times_opened == 2
    clock.now += 4.9
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN


def test_cancelled_probe_frees_its_slot() -> None:
    clock = FakeClock(500.0)
    breaker = make(clock)
    fail(breaker, 3)
    clock.now += 5.0
    probe = breaker.acquire()
    assert not breaker.allows()
    breaker.release(probe)
    assert breaker.allows()


def test_stale_outcome_from_before_opening_is_ignored() -> None:
    clock = FakeClock(500.0)
    breaker = make(clock)
    slow = breaker.acquire()  # started while closed
    fail(breaker, 3)
    clock.now += 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_success(slow)  # must not close the breaker
    assert breaker.state is BreakerState.HALF_OPEN


def test_failure_ratio_over_window_opens() -> None:
    clock = FakeClock(500.0)
    breaker = make(clock, failure_threshold=100, failure_ratio=0.5, window=10.0, minimum_calls=10)
    for i in range(10):
        ticket = breaker.acquire()
        if i % 2:
            breaker.record_failure(ticket)
        else:
            breaker.record_success(ticket)
        clock.now += 0.5
    assert breaker.state is BreakerState.OPEN


def test_failures_outside_the_window_do_not_count() -> None:
    clock = FakeClock(500.0)
    breaker = make(clock, failure_threshold=100, failure_ratio=0.5, window=5.0, minimum_calls=4)
    fail(breaker, 3)
    clock.now += 10.0
    for _ in range(4):
        breaker.record_success(breaker.acquire())
    fail(breaker, 1)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot()["window_calls"] == 5


def test_config_coerce_and_validation() -> None:
    assert CircuitBreakerConfig.coerce(None) == CircuitBreakerConfig()
    assert CircuitBreakerConfig.coerce(False) is None
    config = CircuitBreakerConfig.coerce({"failure_threshold": 2, "recovery_timeout": 1})
    assert config is not None
    assert config.failure_threshold == 2
    with pytest.raises(ConfigError, match="unknown circuit_breaker option"):
        CircuitBreakerConfig.coerce({"threshold": 2})
    with pytest.raises(ConfigError):
        CircuitBreakerConfig(failure_ratio=1.5)


async def test_circuit_breaker_api_call_counts_failures_and_fails_fast() -> None:
    calls = 0

    async def flaky_api(user_id: int) -> Result:
        nonlocal calls
        calls += 1
        return Result.fail(f"user {user_id}", "http_error", status_code=503)

    for _ in range(5):
        result = await circuit_breaker_api_call(flaky_api, 1)
        assert not result.success
    assert helper_breaker(flaky_api).state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await circuit_breaker_api_call(flaky_api, 1)
    assert calls == 5


async def test_circuit_breaker_api_call_passes_through_success() -> None:
    async def healthy(x: int, *, y: int) -> int:
        return x + y

    assert await circuit_breaker_api_call(healthy, 1, y=2) == 3
    assert helper_breaker(healthy).state is BreakerState.CLOSED
