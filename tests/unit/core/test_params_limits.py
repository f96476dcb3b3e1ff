"""Parameter limits and key shapes (pure logic): refused in O(1), never a crash."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iogate.core.errors import ParameterError
from iogate.core.params import (
    MAX_PARAMS,
    check_count,
    check_params_limit,
    count_placeholders,
    normalize_params,
)
from iogate.core.result import Result
from iogate.orchestrator.refs import StepReferenceError, is_step_id, lookup, parse_path


def test_library_ceiling_is_no_larger_than_the_smallest_database_maximum() -> None:
    assert MAX_PARAMS <= 32_766  # SQLite; PostgreSQL allows 32767, MariaDB 65535


@pytest.mark.parametrize(
    "key",
    [
        "²",
        "①",
        "٣",
        "-1",
        " 1",
        "1 ",
        "1.0",
        "+1",
        "0x1",
        "1e3",
        "",
        "$",
        "$$1",
        "١٢",
        "\U0001d7cf",
    ],
)
def test_keys_that_are_not_ascii_positions_are_refused(key: str) -> None:
    with pytest.raises(ParameterError, match=r"not a position|positions start at 1"):
        normalize_params({key: 1})


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"1": "a", "$2": "b"}, ("a", "b")),
        ({"01": "a"}, ("a",)),  # leading zeros: still position 1
        ({str(MAX_PARAMS): "z", **{str(i): i for i in range(1, MAX_PARAMS)}}, None),
    ],
)
def test_ascii_positions_are_accepted(params: dict[str, Any], expected: Any) -> None:
    result = normalize_params(params)
    if expected is not None:
        assert result == expected
    else:
        assert len(result) == MAX_PARAMS


@pytest.mark.parametrize(
    "key", ["10000000", "9" * 5_000, "$" + "9" * 5_000, "0" * 4_000 + "99999", str(MAX_PARAMS + 1)]
)
def test_a_position_beyond_the_ceiling_is_refused_without_building_anything(key: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ParameterError, match="max_params") as raised:
        normalize_params({key: 1})
    assert time.perf_counter() - started < 0.05
    assert len(str(raised.value)) < 300  # the key is never echoed whole


def test_an_int_key_beyond_the_ceiling_is_refused() -> None:
    with pytest.raises(ParameterError, match="max_params"):
        normalize_params({10**5000: 1})
    with pytest.raises(ParameterError, match="max_params"):
        normalize_params({MAX_PARAMS + 1: 1})


def test_a_gap_names_a_few_missing_positions_not_all() -> None:
    with pytest.raises(ParameterError) as raised:
        normalize_params({"1": 1, str(MAX_PARAMS): 2})
    message = str(raised.value)
    assert "missing 2, 3, 4, 5, 6, ..." in message
    assert f"({MAX_PARAMS - 2} in all)" in message
    assert len(message) < 200


def test_a_lower_limit_is_honoured() -> None:
    assert normalize_params({"3": 3, "1": 1, "2": 2}, max_params=3) == (1, 2, 3)
    with pytest.raises(ParameterError, match=r"max_params \(3\)"):
        normalize_params({"4": 1}, max_params=3)
    with pytest.raises(ParameterError, match=r"4 parameters given; at most max_params \(3\)"):
        normalize_params([1, 2, 3, 4], max_params=3)
    with pytest.raises(ParameterError, match="max_params"):
        normalize_params((1, 2, 3, 4), max_params=3)


@pytest.mark.parametrize(
    "params",
    [
        {"10001": 1},
        {"$10001": 1},
        {"9" * 5000: 1},
        {10_001: 1},
        [0] * 10_001,
        {str(i): i for i in range(1, 10_002)},
    ],
)
def test_check_params_limit_refuses_beyond_the_limit(params: Any) -> None:
    with pytest.raises(ParameterError, match=r"max_params \(10000\)"):
        check_params_limit(params, 10_000)


@pytest.mark.parametrize(
    "params",
    [
        None,
        {"10000": 1},
        {"operation": "get", "key": "k"},  # key-value params: not positions
        {"²": 1, "-1": 2, "x" * 100: 3},  # not positions: left to normalize_params
        [0] * 10_000,
        "a string",  # not a shape this check judges
    ],
)
def test_check_params_limit_accepts_within_the_limit(params: Any) -> None:
    check_params_limit(params, 10_000)


def test_placeholders_are_ascii_and_bounded() -> None:
    assert count_placeholders("SELECT $1, $٣", "dollar") == 1
    with pytest.raises(ParameterError, match="beyond the highest position"):
        count_placeholders("SELECT $" + "9" * 5000, "dollar")
    with pytest.raises(ParameterError, match="beyond the highest position"):
        check_count(f"SELECT ${MAX_PARAMS + 1}", (), "dollar")


# JSON object keys are strings; anything a client can send as a key.
KEYS = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-5, max_value=10**12).map(str),
    st.text(alphabet="0123456789²①٣$ -+.", max_size=12),
    st.just("9" * 5000),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.dictionaries(KEYS, st.integers(), max_size=6))
def test_any_mapping_is_a_tuple_or_a_parameter_error(params: dict[str, int]) -> None:
    refusal = ""
    try:
        result = normalize_params(params)
    except ParameterError as exc:
        refusal = str(exc)
    else:
        assert len(result) == len(params) <= MAX_PARAMS
    assert len(refusal) < 300
    try:
        check_params_limit(params, 100)
    except ParameterError as exc:
        refusal = str(exc)
        assert "max_params (100)" in refusal, refusal


# -- step references: the same digit rules -----------------------------------------


@pytest.mark.parametrize("head", ["²", "٣", "①", "9" * 5000])
def test_reference_heads_that_are_not_ascii_numbers_are_refused(head: str) -> None:
    with pytest.raises(StepReferenceError):
        parse_path(f"{head}.data", at=1, ids={})


@pytest.mark.parametrize("part", ["²", "٣", "--1", "9" * 5000, "1.5"])
def test_reference_indexes_that_are_not_ascii_numbers_are_refused(part: str) -> None:
    results = [Result.ok([1, 2, 3])]
    ref = parse_path("0.data", at=1, ids={})
    with pytest.raises(StepReferenceError):
        lookup(type(ref)(text=f"0.data.{part}", step=0, path=("data", part)), results)


def test_step_ids_match_whole() -> None:
    assert is_step_id("user_1")
    assert not is_step_id("user\n")
    assert not is_step_id("12")
    assert not is_step_id(["user"])


@pytest.mark.parametrize("query", ["SELECT $²", "SELECT $" + "9" * 5000, "SELECT $40000"])
def test_mysql_placeholders_beyond_the_limit_are_parameter_errors(query: str) -> None:
    """Not a 500: ``$`` then non-ASCII digits is text, and a position past
    MAX_PARAMS is refused without converting thousands of digits."""
    from iogate.backends.mysql import bind_parameters
    from iogate.core.errors import ParameterError

    with pytest.raises(ParameterError):
        bind_parameters(query, (1,))
