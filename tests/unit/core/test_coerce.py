"""Parameter conversion (iogate.core.coerce) and named operations' declared types."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest

from iogate.core.coerce import (
    PARAM_TYPES,
    CoercionError,
    coerce_postgres_args,
    convert,
    json_schema,
)
from iogate.core.errors import ConfigError, InvalidRequestError
from iogate.core.jsonable import jsonable
from iogate.orchestrator.operations import NamedOperation, build_operation

UTC = dt.UTC
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


@pytest.mark.parametrize(
    ("param_type", "given", "expected"),
    [
        ("int", 42, 42),
        ("int", "42", 42),
        ("int", " -7 ", -7),
        ("int", 3.0, 3),
        ("int", decimal.Decimal("12.000"), 12),
        ("float", "1.5", 1.5),
        ("float", "1e3", 1000.0),
        ("float", 2, 2.0),
        ("decimal", "12.50", decimal.Decimal("12.50")),
        ("decimal", 0.1, decimal.Decimal("0.1")),
        ("decimal", 7, decimal.Decimal(7)),
        ("bool", True, True),
        ("bool", "on", True),
        ("bool", "F", False),
        ("str", "x", "x"),
        ("str", 42, "42"),
        ("date", "2024-05-01", dt.date(2024, 5, 1)),
        ("time", "12:30:00", dt.time(12, 30)),
        ("time", "12:30:00+02:00", dt.time(12, 30, tzinfo=PLUS_TWO)),
        ("datetime", "2024-05-01T12:00:00Z", dt.datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("datetime", "2024-05-01 12:00", dt.datetime(2024, 5, 1, 12)),
        ("timedelta", 90, dt.timedelta(seconds=90)),
        ("timedelta", "1.5", dt.timedelta(seconds=1.5)),
        ("timedelta", "PT1H30M", dt.timedelta(hours=1, minutes=30)),
        ("timedelta", "P2D", dt.timedelta(days=2)),
        ("bytes", "aGVsbG8=", b"hello"),
        ("bytes", "\\x68656c6c6f", b"hello"),
        (
            "uuid",
            "12345678-1234-5678-1234-567812345678",
            uuid.UUID(int=0x12345678123456781234567812345678),
        ),
        ("json", {"a": [1]}, {"a": [1]}),
        ("int", None, None),
    ],
)
def test_convert_reads_what_each_type_accepts(param_type: str, given: Any, expected: Any) -> None:
    assert convert(param_type, given) == expected
    assert type(convert(param_type, given)) is type(expected)


@pytest.mark.parametrize(
    ("param_type", "given", "message"),
    [
        ("int", "1.5", "expected an integer, got a string that is not one"),
        ("int", "٣", "expected an integer"),  # int() reads other numerals; SQL does not
        ("int", "1_000", "expected an integer"),
        ("int", True, "got a boolean"),
        ("int", 1.5, "got a number"),
        ("float", "one", "expected a number"),
        ("decimal", "12,5", "expected an exact number"),
        ("bool", "maybe", "expected a boolean"),
        ("str", [1], "got a list"),
        ("date", "01/05/2024", "ISO 8601 date"),
        ("datetime", "yesterday", "ISO 8601 date-time"),
        ("time", "noon", "ISO 8601 time"),
        ("timedelta", "P1M", "years and months have no fixed length"),
        ("timedelta", "an hour", "seconds or an ISO 8601 duration"),
        ("timedelta", "nan", "expected a duration within"),
        ("bytes", "not base64!", "base64"),
        ("uuid", "1234", "expected a UUID"),
    ],
)
def test_convert_refuses_naming_what_was_expected(
    param_type: str, given: Any, message: str
) -> None:
    with pytest.raises(CoercionError, match=message):
        convert(param_type, given)


def test_convert_never_echoes_the_value() -> None:
    with pytest.raises(CoercionError) as caught:
        convert("int", "s3cret-token")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
        dt.datetime(2024, 5, 1, 12, 30),
        dt.date(2024, 5, 1),
        dt.time(8, 15, 30),
        dt.timedelta(days=1, seconds=3.25),
        decimal.Decimal("12.50"),
        b"\x00\xffbinary",
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ],
)
def test_what_iogate_answers_reads_back_as_the_same_value(value: Any) -> None:
    """A client can send back what it read: jsonable() then convert()."""
    param_type = {
        dt.datetime: "datetime",
        dt.date: "date",
        dt.time: "time",
        dt.timedelta: "timedelta",
        decimal.Decimal: "decimal",
        bytes: "bytes",
        uuid.UUID: "uuid",
    }[type(value)]
    assert convert(param_type, jsonable(value)) == value


def test_postgres_args_follow_the_statement_types() -> None:
    converted = coerce_postgres_args(
        ["int4", "timestamptz", "text", "int8[]", "bytea", "numeric", "interval", "jsonb"],
        ("1", "2024-05-01T12:00:00", 5, ["1", 2], "aGk=", "1.50", 60, "{}"),
    )
    assert converted == (
        1,
        dt.datetime(2024, 5, 1, 12, tzinfo=UTC),  # no offset: UTC, not the local zone
        "5",
        [1, 2],
        b"hi",
        decimal.Decimal("1.50"),
        dt.timedelta(minutes=1),
        "{}",  # JSON text is the json codec's business
    )


def test_postgres_timestamp_and_time_drop_an_offset_as_a_cast_does() -> None:
    converted = coerce_postgres_args(
        ["timestamp", "time", "timetz"], ("2024-05-01T12:00:00+02:00", "08:00+02:00", "08:00")
    )
    assert converted == (
        dt.datetime(2024, 5, 1, 12),
        dt.time(8),
        dt.time(8, tzinfo=UTC),
    )


def test_postgres_args_leave_alone_what_they_cannot_improve() -> None:
    # Already the right type, or a value for a type asyncpg reads as text.
    assert coerce_postgres_args(["int4", "uuid", "inet"], (1, uuid.uuid4(), "127.0.0.1")) is None
    # A boolean for an integer stays for asyncpg to judge (it takes it as 1).
    assert coerce_postgres_args(["int4"], (True,)) is None
    # More arguments than types: the extra ones are for asyncpg to refuse.
    assert coerce_postgres_args(["int4"], ("1", "x")) == (1, "x")


def test_postgres_args_name_the_position_and_type() -> None:
    with pytest.raises(CoercionError, match=r"^parameter \$2 \(date\): expected an ISO 8601 date"):
        coerce_postgres_args(["int4", "date"], ("1", "May 1st"))
    with pytest.raises(CoercionError, match=r"^parameter \$1 \(int4\[\]\): expected an integer"):
        coerce_postgres_args(["int4[]"], (["1", "x"],))


def test_json_schema_of_each_type() -> None:
    assert json_schema(None) == {}
    assert json_schema("json") == {}
    assert json_schema("datetime") == {"type": ["string", "null"], "format": "date-time"}
    for param_type in PARAM_TYPES:
        assert isinstance(json_schema(param_type), dict)


# -- named operations ----------------------------------------------------------------


def _op(**params: str) -> NamedOperation:
    return build_operation("get_user", database="main", query="SELECT $1, $2", params=params)


def test_named_operation_converts_declared_parameters() -> None:
    op = _op(id="int", since="datetime")
    values = op.check_params({"id": "42", "since": "2024-05-01T00:00:00Z"})
    assert values == {"id": 42, "since": dt.datetime(2024, 5, 1, tzinfo=UTC)}
    assert op.params == ("id", "since")  # declaration order is $1, $2
    assert op.check_params({"id": None, "since": None}) == {"id": None, "since": None}


def test_named_operation_refuses_a_wrong_value_naming_the_parameter() -> None:
    op = _op(id="int", since="datetime")
    with pytest.raises(InvalidRequestError, match="parameter 'since': expected an ISO 8601"):
        op.check_params({"id": 1, "since": "last week"})
    assert InvalidRequestError.error_type == "invalid_request"  # 422 over HTTP


def test_the_list_form_still_takes_any_value() -> None:
    op = build_operation("get_user", database="main", query="SELECT $1", params=["id"])
    assert op.check_params({"id": "anything"}) == {"id": "anything"}
    assert op.describe()["params"] == [{"name": "id", "required": True, "type": None}]


def test_describe_shows_the_types() -> None:
    assert _op(id="int", since="datetime").describe()["params"] == [
        {"name": "id", "required": True, "type": "int"},
        {"name": "since", "required": True, "type": "datetime"},
    ]


def test_an_unknown_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="parameter 'id' has unknown type 'integer'"):
        _op(id="integer")


def test_params_schema_is_closed_and_typed() -> None:
    schema = _op(id="int", since="datetime").params_schema()
    assert schema["required"] == ["id", "since"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["id"]["type"] == ["integer", "null"]
