"""``[apis.NAME]``: an HTTP API, its retry policy and its circuit breaker.

``retry`` and ``circuit_breaker`` are read into the library's own objects
(``RetrySettings.policy()`` is a ``RetryPolicy``, ``CircuitBreakerSettings.config()``
a ``CircuitBreakerConfig``): every field of theirs can be set from a file,
the defaults are theirs, and a table is checked by building the object, so
the library's rules refuse a bad value at load time under its key path.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from iogate.core.errors import ConfigError
from iogate.gateway.settings.base import AdaptiveConcurrencySettings, Strict, adaptive_switch
from iogate.resilience.breaker import (
    DEFAULT_FAILURE_RATIO,
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_HALF_OPEN_MAX_CALLS,
    DEFAULT_MINIMUM_CALLS,
    DEFAULT_RECOVERY_TIMEOUT,
    DEFAULT_WINDOW,
    CircuitBreakerConfig,
)
from iogate.resilience.retry import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_RETRY_STATUSES,
    RetryPolicy,
)

__all__ = ["ApiSettings", "CircuitBreakerSettings", "RetrySettings"]

# A config file may not ask for more: each attempt can take a whole `timeout`.
MAX_ATTEMPTS = 20


class RetrySettings(Strict):
    """``retry``: a ``RetryPolicy``; ``attempts`` counts the first try."""

    attempts: int = Field(default=DEFAULT_ATTEMPTS, le=MAX_ATTEMPTS)
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    # Upstream answers worth another attempt (the rest are returned as they are).
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES

    @field_validator("retry_statuses")
    @classmethod
    def _http_statuses(cls, value: frozenset[int]) -> frozenset[int]:
        wrong = sorted(status for status in value if not 100 <= status <= 599)
        if wrong:
            raise ValueError(f"HTTP statuses are 100 to 599, got {', '.join(map(str, wrong))}")
        return value

    @model_validator(mode="after")
    def _library_rules(self) -> RetrySettings:
        try:
            self.policy()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            attempts=self.attempts,
            backoff_initial=self.backoff_initial,
            backoff_max=self.backoff_max,
            retry_statuses=self.retry_statuses,
        )


class CircuitBreakerSettings(Strict):
    """``circuit_breaker``: a ``CircuitBreakerConfig``.

    ``failure_ratio = false`` turns the ratio rule off (TOML has no null):
    the circuit then opens on ``failure_threshold`` consecutive failures only.
    """

    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    recovery_timeout: float = DEFAULT_RECOVERY_TIMEOUT
    failure_ratio: float | None = DEFAULT_FAILURE_RATIO
    window: float = DEFAULT_WINDOW
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    half_open_max_calls: int = DEFAULT_HALF_OPEN_MAX_CALLS

    @field_validator("failure_ratio", mode="before")
    @classmethod
    def _ratio_or_off(cls, value: Any) -> Any:
        if value is False:
            return None
        if value is True:
            raise ValueError("must be a ratio in (0, 1], or false to turn the ratio rule off")
        return value

    @model_validator(mode="after")
    def _library_rules(self) -> CircuitBreakerSettings:
        try:
            self.config()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def config(self) -> CircuitBreakerConfig:
        return CircuitBreakerConfig(
            failure_threshold=self.failure_threshold,
            recovery_timeout=self.recovery_timeout,
            failure_ratio=self.failure_ratio,
            window=self.window,
            minimum_calls=self.minimum_calls,
            half_open_max_calls=self.half_open_max_calls,
        )


class ApiSettings(Strict):
    base_url: str
    max_connections: int = Field(default=30, gt=0)
    timeout: float = Field(default=10.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    # Unset: the library's defaults (RetryPolicy(), CircuitBreakerConfig()).
    retry: RetrySettings | None = None
    circuit_breaker: CircuitBreakerSettings | None = None
    rate_limit: str | None = None
    # HTTPS certificate checks; ca_bundle (a PEM file) replaces the system CAs.
    verify_ssl: bool = True
    ca_bundle: str | None = None
    # Latency-driven admission in the gateway (off unless set; docs/reliability.md).
    adaptive_concurrency: AdaptiveConcurrencySettings | None = None

    _adaptive = field_validator("adaptive_concurrency", mode="before")(adaptive_switch)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        from iogate.backends.urls import BaseURL

        try:
            BaseURL.parse(value)  # the manager's own rule, at load time
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("base_url ")) from None
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            from limits import parse

            try:
                parse(value)  # what RateLimiter parses it with
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a limit such as '100/second' or '10 per minute'"
                ) from None
        return value

    def retry_policy(self) -> RetryPolicy:
        """The API manager's retry policy: the table's, or the library's default."""
        return RetryPolicy() if self.retry is None else self.retry.policy()

    def breaker_config(self) -> CircuitBreakerConfig:
        """The API manager's breaker: the table's, or the library's default."""
        if self.circuit_breaker is None:
            return CircuitBreakerConfig()
        return self.circuit_breaker.config()
