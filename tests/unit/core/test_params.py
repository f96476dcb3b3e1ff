"""Parameter normalisation (pure logic)."""

from __future__ import annotations

import pytest

from iogate.core.errors import ParameterError
from iogate.core.params import check_count, count_placeholders, normalize_params


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, ()),
        ({}, ()),
        ({"1": "a", "2": "b"}, ("a", "b")),
        ({"2": "b", "1": "a"}, ("a", "b")),
        ({1: "a", 2: "b"}, ("a", "b")),
        ({"$1": "a"}, ("a",)),
        (["a", "b"], ("a", "b")),
        (("a",), ("a",)),
    ],
)
def test_accepted_shapes(params: object, expected: tuple[object, ...]) -> None:
    assert normalize_params(params) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"1": 1, "3": 3}, "missing 2"),
        ({"2": 1}, "missing 1"),
        ({"x": 1}, "'x' is not a position"),
        ({"0": 1}, "positions start at 1"),
        ({True: 1}, "not a position"),
        ({"1": 1, 1: 2}, "given twice"),
        ("abc", "not str"),
        (42, "not int"),
    ],
)
def test_refused_shapes(params: object, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        normalize_params(params)  # type: ignore[arg-type]


def test_placeholder_counting_ignores_literals_and_comments() -> None:
    assert count_placeholders("SELECT $1, '$5', \"$7\" -- $9\n, $2", "dollar") == 2
    assert count_placeholders("SELECT ?, '?' /* ? */, ?", "qmark") == 2
    assert count_placeholders("DO $$ BEGIN END $$", "dollar") is None


def test_count_mismatch_names_both_numbers() -> None:
    with pytest.raises(ParameterError, match="expects 2 parameters, got 3"):
        check_count("SELECT $1, $2", (1, 2, 3), "dollar")
    check_count("SELECT $1, $2", (1, 2), "dollar")
