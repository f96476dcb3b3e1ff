"""The seed's resilience helpers, on iogate's retry and breaker.

* ``execute_with_retry(fn, max_retries=3, delay=1.0)`` (seed 000): ``fn`` is
  a zero-argument callable returning an awaitable; a raised exception and a
  failed ``Result`` are both retried. ``max_retries`` counts every attempt
  (the seed's loop ran ``range(max_retries)``); waits are full-jitter
  exponential from ``delay``. The last outcome is returned, or its exception
  re-raised unwrapped.
* ``resilient_database_operation`` / ``resilient_api_operation`` (seed 002):
  three attempts, retrying only transient failures, as the seed's tenacity
  decorators did: connection errors and timeouts for databases; timeouts and
  rate limits for APIs. Exceptions are matched by the builtin classes too,
  so the seed's ``ConnectionError``/``TimeoutError`` aliases and asyncio's
  timeouts all count; a failed ``Result`` counts by its ``error_type``. The
  seed waited 4-10 s between attempts; here the waits are the default
  backoff (0.1-2 s, full jitter), fit for a request path.
* ``circuit_breaker_api_call(api_func, *args, **kwargs)`` (seed 002): one
  breaker per ``api_func`` (the seed's decorator shared a single breaker
  between every API), 5 consecutive failures open it for 60 s. While open it
  raises ``CircuitOpenError`` without calling ``api_func``.

None of these knows whether the wrapped call is idempotent: wrap only calls
that are safe to repeat.
"""

from __future__ import annotations

import asyncio
import builtins
import random as _random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import tenacity

from iogate.core.errors import RateLimitedError
from iogate.core.result import Result
from iogate.resilience.breaker import CircuitBreaker, CircuitBreakerConfig
from iogate.resilience.retry import (
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
    Random,
    Sleep,
    backoff_delay,
    is_testing,
)

__all__ = [
    "circuit_breaker_api_call",
    "execute_with_retry",
    "helper_breaker",
    "resilient_api_operation",
    "resilient_database_operation",
]

T = TypeVar("T")

_DB_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    builtins.ConnectionError,
    builtins.TimeoutError,
)
_DB_TRANSIENT_TYPES = frozenset({"connection_error", "timeout", "pool_exhausted"})
_API_TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    builtins.TimeoutError,
    RateLimitedError,
)
_API_TRANSIENT_TYPES = frozenset({"timeout", "rate_limited"})
_SEED_ATTEMPTS = 3
_HELPER_BREAKER = CircuitBreakerConfig(
    failure_threshold=5, recovery_timeout=60.0, failure_ratio=None
)
_MAX_HELPER_BREAKERS = 1024


def _is_failed_result(value: object) -> bool:
    return isinstance(value, Result) and not value.success


def _wait(initial: float, maximum: float, random: Random) -> Callable[[Any], float]:
    def wait(retry_state: tenacity.RetryCallState) -> float:
        if is_testing():
            return 0.0
        return backoff_delay(
            retry_state.attempt_number, initial=initial, maximum=maximum, random=random
        )

    return wait


async def _run(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    retry: tenacity.retry_base,
    initial: float,
    maximum: float,
    sleep: Sleep,
    random: Random,
) -> T:
    def last_outcome(retry_state: tenacity.RetryCallState) -> Any:
        assert retry_state.outcome is not None
        return retry_state.outcome.result()  # re-raises the last exception unwrapped

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=_wait(initial, maximum, random),
        retry=retry,
        sleep=sleep,
        retry_error_callback=last_outcome,
        reraise=True,
    )
    result: T = await retrying(fn)
    return result


async def execute_with_retry(
    fn: Callable[[], Awaitable[T]],
    max_retries: int = 3,
    delay: float = 1.0,
    *,
    sleep: Sleep = asyncio.sleep,
    random: Random = _random.random,
) -> T:
    """Call ``fn()`` up to ``max_retries`` times; see the module doc."""

    # tenacity awaits only what it recognises as a coroutine function; the
    # seed passes lambdas returning awaitables, so wrap them.
    async def call() -> T:
        return await fn()

    return await _run(
        call,
        attempts=max_retries,
        retry=tenacity.retry_if_exception_type(Exception)
        | tenacity.retry_if_result(_is_failed_result),
        initial=delay,
        maximum=delay * 2 ** max(0, max_retries - 1),
        sleep=sleep,
        random=random,
    )


def _transient(
    exceptions: tuple[type[BaseException], ...], error_types: frozenset[str]
) -> tenacity.retry_base:
    def failed_transiently(value: object) -> bool:
        return isinstance(value, Result) and not value.success and value.error_type in error_types

    return tenacity.retry_if_exception_type(exceptions) | tenacity.retry_if_result(
        failed_transiently
    )


async def resilient_database_operation(
    operation_func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
) -> T:
    """``await operation_func(*args, **kwargs)``, retried on transient database failures."""
    retry = _transient(_DB_TRANSIENT_EXCEPTIONS, _DB_TRANSIENT_TYPES)
    return await _seed_retry(retry, operation_func, *args, **kwargs)


async def resilient_api_operation(
    operation_func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
) -> T:
    """``await operation_func(*args, **kwargs)``, retried on timeouts and rate limits."""
    retry = _transient(_API_TRANSIENT_EXCEPTIONS, _API_TRANSIENT_TYPES)
    return await _seed_retry(retry, operation_func, *args, **kwargs)


async def _seed_retry(
    retry: tenacity.retry_base,
    operation_func: Callable[..., Awaitable[T]],
    *args: Any,
    **kwargs: Any,
) -> T:
    """The seed decorators' policy: a few attempts with jittered backoff."""

    async def call() -> T:
        return await operation_func(*args, **kwargs)

    return await _run(
        call,
        attempts=_SEED_ATTEMPTS,
        retry=retry,
        initial=DEFAULT_BACKOFF_INITIAL,
        maximum=DEFAULT_BACKOFF_MAX,
        sleep=asyncio.sleep,
        random=_random.random,
    )


_breakers: dict[Any, CircuitBreaker] = {}


def helper_breaker(api_func: Callable[..., Any]) -> CircuitBreaker:
    """The breaker ``circuit_breaker_api_call`` uses for ``api_func``."""
    breaker = _breakers.get(api_func)
    if breaker is None:
        if len(_breakers) >= _MAX_HELPER_BREAKERS:
            # Bounded: callers passing a fresh lambda each time must not leak.
            _breakers.pop(next(iter(_breakers)))
        name = getattr(api_func, "__qualname__", type(api_func).__name__)
        breaker = _breakers[api_func] = CircuitBreaker(_HELPER_BREAKER, name=name)
    return breaker


async def circuit_breaker_api_call(
    api_func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
) -> T:
    """``await api_func(*args, **kwargs)`` behind ``api_func``'s breaker.

    A raised exception or a failed ``Result`` counts as a failure; while the
    breaker is open this raises ``CircuitOpenError`` and does not call.
    """
    breaker = helper_breaker(api_func)
    ticket = breaker.acquire()
    try:
        result = await api_func(*args, **kwargs)
    except asyncio.CancelledError:
        breaker.release(ticket)
        raise
    except Exception:
        breaker.record_failure(ticket)
        raise
    if _is_failed_result(result):
        breaker.record_failure(ticket)
    else:
        breaker.record_success(ticket)
    return result
