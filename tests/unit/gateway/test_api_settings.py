"""``[apis.NAME]`` retry and circuit_breaker: read into the library's own objects."""

from __future__ import annotations

import dataclasses

import pytest

from iogate.core.errors import ConfigError
from iogate.gateway.settings import CircuitBreakerSettings, RetrySettings, parse_settings
from iogate.resilience.breaker import CircuitBreakerConfig
from iogate.resilience.retry import RetryPolicy

API = '[apis.crm]\nbase_url = "https://crm.example.com/v1"\n'


def refusal(lines: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings(API + lines, env={})
    return str(caught.value)


def test_every_field_of_the_library_objects_can_be_set_from_a_file() -> None:
    # A field added to RetryPolicy or CircuitBreakerConfig must reach the file too.
    retry = {f.name for f in dataclasses.fields(RetryPolicy)}
    breaker = {f.name for f in dataclasses.fields(CircuitBreakerConfig)}
    assert set(RetrySettings.model_fields) == retry
    assert set(CircuitBreakerSettings.model_fields) == breaker


def test_the_defaults_are_the_library_defaults() -> None:
    settings = parse_settings(API + "retry = {}\ncircuit_breaker = {}\n", env={}).apis["crm"]
    assert settings.retry_policy() == RetryPolicy()
    assert settings.breaker_config() == CircuitBreakerConfig()
    unset = parse_settings(API, env={}).apis["crm"]
    assert unset.retry_policy() == RetryPolicy()
    assert unset.breaker_config() == CircuitBreakerConfig()


def test_retry_statuses_from_a_file() -> None:
    settings = parse_settings(API + "retry = { retry_statuses = [500, 503] }\n", env={})
    assert settings.apis["crm"].retry_policy().retry_statuses == frozenset({500, 503})


def test_failure_ratio_can_be_switched_off_from_a_file() -> None:
    # TOML has no null, and leaving the key out means the library's 0.5.
    text = API + "circuit_breaker = { failure_ratio = false, minimum_calls = 5 }\n"
    config = parse_settings(text, env={}).apis["crm"].breaker_config()
    assert config.failure_ratio is None
    assert config.minimum_calls == 5


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            "retry = { backoff_initial = 3, backoff_max = 1 }\n",
            "apis.crm.retry: retry.backoff_max must be at least retry.backoff_initial",
        ),
        (
            "retry = { attempts = 0 }\n",
            "apis.crm.retry: retry.attempts must be at least 1, got 0",
        ),
        (
            "retry = { attempts = 21 }\n",
            "apis.crm.retry.attempts: Input should be less than or equal to 20 (got 21)",
        ),
        (
            "retry = { retry_statuses = [503, 42] }\n",
            "apis.crm.retry.retry_statuses: HTTP statuses are 100 to 599, got 42",
        ),
        (
            "circuit_breaker = { failure_ratio = 1.5 }\n",
            "apis.crm.circuit_breaker: circuit_breaker.failure_ratio must be in (0, 1]",
        ),
        (
            "circuit_breaker = { failure_ratio = true }\n",
            "apis.crm.circuit_breaker.failure_ratio: must be a ratio in (0, 1], "
            "or false to turn the ratio rule off",
        ),
        (
            "circuit_breaker = { window = 0 }\n",
            "apis.crm.circuit_breaker: circuit_breaker.window must be positive",
        ),
        ("circuit_breaker = { windw = 5 }\n", "apis.crm.circuit_breaker.windw: unknown key"),
    ],
)
def test_the_library_rules_refuse_at_load_time(lines: str, message: str) -> None:
    assert refusal(lines) == message
