"""Attempts of one API call: admitted by the breaker and the rate limiter, judged after.

Each attempt passes the circuit breaker and the rate limiter before it
touches the network; its outcome goes to the breaker (timeouts, connection
errors and 5xx count against the upstream, 4xx does not) and, for a
request's first attempt, a deposit goes to the retry budget. Whether another
attempt is due is decided here too: only for a transient failure, and for a
POST/PATCH only with an Idempotency-Key or proof that nothing was sent.

The first attempt is run by the manager inline; the retry machinery
(``iogate.resilience.retry``) is built only when a retry is due.
"""

from __future__ import annotations

import functools
import random as _random
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from iogate.backends.http.wire import Call, Wire
from iogate.core.deadline import Deadline
from iogate.core.errors import CircuitOpenError, RateLimitedError
from iogate.core.redact import SecretMask
from iogate.core.result import Result
from iogate.resilience.breaker import CircuitBreaker, CircuitBreakerConfig
from iogate.resilience.budget import RetryBudget
from iogate.resilience.deadline_headers import format_timeout
from iogate.resilience.ratelimit import RateLimiter
from iogate.resilience.retry import Random, RetryPolicy, Sleep, retry_after_first

__all__ = ["Attempts"]

_TRANSIENT = frozenset({"timeout", "connection_error"})


class Attempts:
    """The resilience around one manager's attempts (fixed when it is built)."""

    __slots__ = (
        "breaker",
        "budget",
        "may_retry",
        "policy",
        "random",
        "rate_limiter",
        "sleep",
        "stop_checks",
        "wire",
    )

    def __init__(
        self,
        wire: Wire,
        *,
        policy: RetryPolicy,
        breaker: CircuitBreaker | None,
        rate_limiter: RateLimiter | None,
        budget: RetryBudget | None,
        sleep: Sleep,
        random: Random = _random.random,
    ) -> None:
        self.wire = wire
        self.policy = policy
        self.may_retry = policy.attempts > 1
        self.breaker = breaker
        self.rate_limiter = rate_limiter
        self.budget = budget
        self.sleep = sleep
        self.random = random
        self.stop_checks = self._stop_checks()

    @classmethod
    def configure(
        cls,
        wire: Wire,
        *,
        name: str,
        retry: RetryPolicy | Mapping[str, Any] | bool | int | None,
        circuit_breaker: CircuitBreakerConfig | Mapping[str, Any] | bool | None,
        rate_limit: str | None,
        rate_limit_storage: str | None,
        retry_budget: RetryBudget | bool,
        clock: Callable[[], float],
        sleep: Sleep,
        random: Random,
    ) -> Attempts:
        """From the manager's options: each feature built, or None when it is off."""
        breaker_config = CircuitBreakerConfig.coerce(circuit_breaker)
        if retry_budget is True:
            budget: RetryBudget | None = RetryBudget(clock=clock)
        elif retry_budget is False:
            budget = None
        else:
            budget = retry_budget
        return cls(
            wire,
            policy=RetryPolicy.coerce(retry),
            breaker=(
                None
                if breaker_config is None
                else CircuitBreaker(breaker_config, name=name, clock=clock)
            ),
            rate_limiter=(
                None
                if rate_limit is None
                else RateLimiter(rate_limit, name=name, storage_uri=rate_limit_storage)
            ),
            budget=budget,
            sleep=sleep,
            random=random,
        )

    def _stop_checks(self) -> list[Callable[[], bool]]:
        checks: list[Callable[[], bool]] = []
        breaker = self.breaker
        if breaker is not None:
            checks.append(lambda: not breaker.allows())
        budget = self.budget
        if budget is not None:
            # Last on purpose: it takes a token, so it runs only for a retry
            # that every other check has already allowed.
            checks.append(lambda: not budget.try_withdraw())
        return checks

    def should_retry(self, call: Call, result: Result) -> bool:
        if result.success or call.permanent:
            return False
        transient = result.error_type in _TRANSIENT or (
            result.status_code is not None and result.status_code in self.policy.retry_statuses
        )
        # A POST/PATCH that may have reached the upstream could be applied
        # twice; retry it only with an Idempotency-Key or proof it never left.
        return transient and (call.idempotent or call.not_sent)

    async def retry(
        self,
        first: Result,
        session: aiohttp.ClientSession,
        call: Call,
        url: str,
        query: list[tuple[str, str]] | None,
        body: bytes | None,
        headers: dict[str, str] | None,
        deadline: Deadline,
        mask: SecretMask,
        deadline_forms: tuple[str, ...],
    ) -> Result:
        """Go on after a ``first`` attempt that ``should_retry`` found worth retrying."""
        return await retry_after_first(
            first,
            functools.partial(
                self.attempt,
                session,
                call,
                url,
                query,
                body,
                headers,
                deadline,
                mask,
                deadline_forms,
            ),
            policy=self.policy,
            should_retry=lambda result: self.should_retry(call, result),
            deadline=deadline,
            stop_checks=self.stop_checks,
            sleep=self.sleep,
            random=self.random,
        )

    async def attempt(
        self,
        session: aiohttp.ClientSession,
        call: Call,
        url: str,
        query: list[tuple[str, str]] | None,
        body: bytes | None,
        headers: dict[str, str] | None,
        deadline: Deadline,
        mask: SecretMask,
        deadline_forms: tuple[str, ...],
        remaining: float | None = None,
    ) -> Result:
        """One attempt; ``remaining`` is the deadline's time left when the
        caller has just read it (a first attempt under the manager's own
        fresh deadline), None to read it here."""
        call.attempts += 1
        ticket: int | None = None
        breaker = self.breaker
        try:
            if breaker is not None:
                ticket = breaker.acquire()
            if self.rate_limiter is not None:
                await self.rate_limiter.acquire()
        except (CircuitOpenError, RateLimitedError) as exc:
            if breaker is not None and ticket is not None:
                breaker.release(ticket)
            call.not_sent = call.attempts == 1 or call.not_sent
            self._deposit(call)
            return Result.from_exception(exc)
        if remaining is None:
            remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            if breaker is not None and ticket is not None:
                breaker.release(ticket)
            self._deposit(call)
            return Result.fail(f"{call.method}: deadline passed", "timeout")
        if deadline_forms and remaining is not None:
            # What is left now, after earlier attempts and waits: each hop of
            # a chain of services works to the same end point.
            headers = dict(headers) if headers else {}
            for name in deadline_forms:
                headers[name] = format_timeout(name, remaining)
        try:
            result = await self.wire.send(session, call, url, query, body, headers, remaining, mask)
        except BaseException:
            if breaker is not None and ticket is not None:
                breaker.release(ticket)
            raise
        if ticket is not None:
            assert breaker is not None
            # 4xx means the upstream is up: only these count against it.
            status = result.status_code
            if result.error_type in _TRANSIENT or (status is not None and status >= 500):
                breaker.record_failure(ticket)
            else:
                breaker.record_success(ticket)
        if call.attempts == 1 and self.budget is not None:  # _deposit, inlined
            self.budget.deposit()
        return result

    def _deposit(self, call: Call) -> None:
        """A request's share of the retry budget, paid when its first attempt ends.

        Paid then, not when the request starts, so that a request's own
        deposit is in before it asks for a retry. Deposits of requests still
        in flight would otherwise pile up past one token, and what piles up is
        kept as reserve, which is only lent: a burst of concurrent failures
        would then get well under the ratio.
        """
        if call.attempts == 1 and self.budget is not None:
            self.budget.deposit()
