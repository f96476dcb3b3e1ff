"""``Result.raise_for_error()``: a failed Result raises the class its error_type names."""

from __future__ import annotations

import pytest

from iogate import Result
from iogate.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    CircuitOpenError,
    ClosedError,
    DatabaseConnectionError,
    DatabaseError,
    HTTPStatusError,
    InvalidRequestError,
    OperationTimeoutError,
    PoolExhaustedError,
    QueryError,
    RateLimitError,
    ReadOnlyError,
    ResourceNotFoundError,
    UnknownOutcomeError,
)


def test_success_returns_the_result_itself() -> None:
    ok = Result.ok([{"id": 1}])
    assert ok.raise_for_error() is ok
    assert ok.raise_for_error("load").data == [{"id": 1}]


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("query_error", QueryError),
        ("read_only", ReadOnlyError),
        ("connection_error", DatabaseConnectionError),
        ("unknown_outcome", UnknownOutcomeError),
        ("pool_exhausted", PoolExhaustedError),
        ("timeout", OperationTimeoutError),
        ("invalid_request", InvalidRequestError),
        ("forbidden_statement", InvalidRequestError),
        ("result_too_large", InvalidRequestError),
        ("not_found", ResourceNotFoundError),
        ("closed", ClosedError),
        ("circuit_open", CircuitOpenError),
        ("something_new", DatabaseError),
    ],
)
def test_database_codes(error_type: str, expected: type[Exception]) -> None:
    failed = Result.fail("it broke", error_type, operation="query")
    with pytest.raises(expected, match="load user: it broke") as info:
        failed.raise_for_error("load user")
    assert type(info.value) is expected
    assert info.value.error_type in (error_type, "database_error", "invalid_request")


def test_api_codes_take_the_api_classes() -> None:
    cases: list[tuple[Result, type[Exception]]] = [
        (Result.fail("refused", "connection_error", operation="GET"), APIConnectionError),
        (Result.fail("404", "http_error", operation="GET", status_code=404), HTTPStatusError),
        (Result.fail("no", "http_error", operation="POST", status_code=401), AuthenticationError),
        (Result.fail("slow", "timeout", operation="GET"), OperationTimeoutError),
        (Result.fail("odd", "something_new", operation="PUT"), APIError),
    ]
    for failed, expected in cases:
        with pytest.raises(expected) as info:
            failed.raise_for_error()
        assert type(info.value) is expected, (failed, info.value)
    with pytest.raises(HTTPStatusError) as status:
        Result.fail("teapot", "http_error", operation="GET", status_code=418).raise_for_error()
    assert status.value.status_code == 418


def test_retry_after_travels_with_the_exception() -> None:
    with pytest.raises(RateLimitError) as limited:
        Result.fail("slow down", "rate_limited", retry_after=2.5).raise_for_error()
    assert limited.value.retry_after == 2.5
    with pytest.raises(CircuitOpenError) as opened:
        Result.fail("open", "circuit_open", retry_after=1.0).raise_for_error()
    assert opened.value.retry_after == 1.0


def test_every_error_class_names_a_code_of_the_closed_set() -> None:
    from iogate.core import errors

    classes = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.IogateError)
    ]
    assert len(classes) > 15
    for cls in classes:
        assert cls.error_type in errors.ERROR_TYPES, cls
    # raise_for_error has decided every code: none falls back by accident.
    decided = set(errors._BY_TYPE) | errors._SPECIAL
    assert errors.ERROR_TYPES - {"unknown"} <= decided, errors.ERROR_TYPES - decided
