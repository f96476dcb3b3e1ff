"""Parameter values converted to the type their target expects.

JSON has strings, numbers, booleans, lists and objects; SQL parameters have
dates, intervals, exact numbers and bytes. iogate answers those as ISO 8601
text, seconds, exact strings and base64 (:mod:`iogate.core.jsonable`), and
this module reads the same forms back, so a client can send what it read.

The target type always decides, never the look of the string: ``"2024"``
is a number for an ``int`` parameter and text for a ``text`` one.

Two users:

- :func:`coerce_postgres_args`: PostgreSQL, by the parameter types of the
  prepared statement (asyncpg's ``PreparedStatement.get_parameters()``).
  The backend calls it only after asyncpg refused to encode an argument, so
  a call whose arguments already fit pays nothing. It converts strings for
  non-text types, numbers for text and intervals, and leaves every other
  value as it was (asyncpg has already accepted or will explain it).
- :func:`convert`: a named operation's declared parameter types
  (``params = { id = "int", since = "datetime" }``), checked before any I/O.

Forms read (the first is what iogate writes):

- int: an integer; decimal digits as text (``"42"``, ``" -7 "``); a float
  or Decimal without a fraction.
- float: a number; numeric text (``"1.5"``, ``"1e3"``, ``"NaN"``).
- decimal: exact text (``"12.50"``); an integer; a float (its shortest repr).
- bool: a boolean; PostgreSQL's words (``true``/``false``, ``t``/``f``,
  ``yes``/``no``, ``on``/``off``, ``1``/``0``).
- str: text; a number becomes its text (``42`` -> ``"42"``).
- date, time, datetime: ISO 8601 as ``fromisoformat`` reads it
  (``2024-05-01T12:00:00+00:00``, ``...Z``, a space instead of ``T``).
- timedelta: seconds (a number or numeric text); an ISO 8601 duration
  (``PT1H30M``, ``P2D``) or ``HH:MM:SS``, read by pydantic.
- bytes: base64 (standard alphabet); PostgreSQL's hex form ``\\x0a1b``.
- uuid: its text.
- json: anything, unchanged.

PostgreSQL's own rules where a time zone does not fit the type:
``timestamp`` and ``time`` ignore an offset (as a literal cast does), and
``timestamptz``/``timetz`` read text without an offset as UTC (asyncpg
would otherwise take the gateway's local zone). Years and months are
refused for intervals: they have no fixed length in seconds.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

__all__ = [
    "PARAM_TYPES",
    "CoercionError",
    "ParamType",
    "coerce_postgres_args",
    "convert",
    "json_schema",
]

ParamType = Literal[
    "str", "int", "float", "decimal", "bool", "date", "time", "datetime", "timedelta",
    "bytes", "uuid", "json",
]  # fmt: skip
PARAM_TYPES: tuple[str, ...] = get_args(ParamType)
"""The types a named operation may declare for a parameter."""

# ASCII only: int() and float() also read "٣" and "1_000".
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
_NUMBER = re.compile(
    r"\s*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)\s*",
    re.IGNORECASE,
)
_TRUE = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE = frozenset({"f", "false", "n", "no", "off", "0"})


class CoercionError(ValueError):
    """A value that cannot be read as its target type; the message says what was expected."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string that is not one"
    if isinstance(value, int | float | decimal.Decimal):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _refuse(expected: str, value: Any) -> CoercionError:
    return CoercionError(f"expected {expected}, got {_kind(value)}")


# -- one converter per type -------------------------------------------------------
# Each returns a value of its type or raises CoercionError.


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        try:
            return int(value)
        except ValueError:  # more digits than int() reads (sys.int_info)
            pass
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, decimal.Decimal)
        and value.is_finite()
        and value == value.to_integral_value()
    ):
        return int(value)
    raise _refuse("an integer", value)


def _to_float(value: Any) -> float:
    if isinstance(value, float):
        return value
    try:
        if isinstance(value, int | decimal.Decimal) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            return float(value)
    except OverflowError:  # an integer beyond a double's range
        raise CoercionError("expected a number, got one too large for a double") from None
    raise _refuse("a number", value)


def _to_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return decimal.Decimal(value)
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return decimal.Decimal(value.strip())
    raise _refuse("an exact number such as '12.50'", value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _refuse("a boolean (true/false)", value)


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        return str(value)
    raise _refuse("a string", value)


def _to_date(value: Any) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _refuse("an ISO 8601 date such as 2024-05-01", value)


def _parse_time(value: Any) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str):
        try:
            return dt.time.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _refuse("an ISO 8601 time such as 12:30:00", value)


def _parse_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise _refuse("an ISO 8601 date-time such as 2024-05-01T12:00:00+00:00", value)


def _naive_time(value: Any) -> dt.time:
    return _parse_time(value).replace(tzinfo=None)


def _aware_time(value: Any) -> dt.time:
    parsed = _parse_time(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _naive_datetime(value: Any) -> dt.datetime:
    return _parse_datetime(value).replace(tzinfo=None)


def _aware_datetime(value: Any) -> dt.datetime:
    parsed = _parse_datetime(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


_DURATION = "seconds or an ISO 8601 duration such as PT1H30M"
_duration_adapter: Any = None


def _seconds(value: float | decimal.Decimal | str) -> dt.timedelta:
    try:
        return dt.timedelta(seconds=float(value))
    except (OverflowError, ValueError):  # NaN, infinities, beyond timedelta's range
        raise CoercionError(f"expected a duration within {dt.timedelta.max}") from None


def _to_timedelta(value: Any) -> dt.timedelta:
    global _duration_adapter
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        return _seconds(value)
    if not isinstance(value, str):
        raise _refuse(_DURATION, value)
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return _seconds(text)
    date_part = text.upper().lstrip("+-").partition("T")[0]
    if date_part.startswith("P") and ("Y" in date_part or "M" in date_part):
        raise CoercionError(
            "expected a duration in days, hours, minutes or seconds: years and months "
            "have no fixed length"
        )
    if _duration_adapter is None:
        from pydantic import TypeAdapter  # lazily: only a duration given as text needs it

        _duration_adapter = TypeAdapter(dt.timedelta)
    try:
        parsed: dt.timedelta = _duration_adapter.validate_python(text)
    except ValueError:
        raise _refuse(_DURATION, value) from None
    return parsed


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.startswith("\\x"):
                return bytes.fromhex(text[2:])
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise _refuse("base64 text (or PostgreSQL's \\x hex form)", value)


def _to_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    raise _refuse("a UUID", value)


def _unchanged(value: Any) -> Any:
    return value


Converter = Callable[[Any], Any]

_DECLARED: dict[str, Converter] = {
    "str": _to_str,
    "int": _to_int,
    "float": _to_float,
    "decimal": _to_decimal,
    "bool": _to_bool,
    "date": _to_date,
    "time": _parse_time,
    "datetime": _parse_datetime,
    "timedelta": _to_timedelta,
    "bytes": _to_bytes,
    "uuid": _to_uuid,
    "json": _unchanged,
}


def convert(param_type: str, value: Any) -> Any:
    """``value`` as ``param_type`` (one of :data:`PARAM_TYPES`); None stays None.

    A date-time or time without an offset stays naive: the database reads it
    in its own way (``timestamp`` as written, ``timestamptz`` in the session
    time zone). Raises :class:`CoercionError` naming what was expected.
    """
    if value is None:
        return None
    return _DECLARED[param_type](value)


# -- PostgreSQL ---------------------------------------------------------------------

# asyncpg's type names (a domain is reported as its base type); "[]" marks an array.
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "char", "name", "citext"})
_PG_PARSERS: dict[str, Converter] = {
    "int2": _to_int,
    "int4": _to_int,
    "int8": _to_int,
    "oid": _to_int,
    "float4": _to_float,
    "float8": _to_float,
    "numeric": _to_decimal,
    "bool": _to_bool,
    "date": _to_date,
    "time": _naive_time,
    "timetz": _aware_time,
    "timestamp": _naive_datetime,
    "timestamptz": _aware_datetime,
    "interval": _to_timedelta,
    "bytea": _to_bytes,
    "uuid": _to_uuid,
}


def _pg_value(type_name: str, value: Any) -> Any:
    """``value`` for the PostgreSQL type ``type_name``, or ``value`` itself."""
    if type_name.endswith("[]"):
        if isinstance(value, list | tuple):
            element = type_name[:-2]
            return [_pg_value(element, item) for item in value]
        return value
    if isinstance(value, str):
        parse = _PG_PARSERS.get(type_name)
        return parse(value) if parse is not None else value
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        if type_name in _TEXT_TYPES:
            return str(value)
        if type_name == "interval":
            return _to_timedelta(value)
    return value


def coerce_postgres_args(type_names: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...] | None:
    """``args`` converted for parameters of these types, or None when none changed.

    ``type_names`` are asyncpg's names for the prepared statement's parameter
    types (``int4``, ``timestamptz``, ``bytea[]``). Raises
    :class:`CoercionError` whose message starts with ``parameter $N (type)``.
    """
    converted: list[Any] = []
    changed = False
    for position, (type_name, value) in enumerate(zip(type_names, args, strict=False), 1):
        try:
            new = _pg_value(type_name, value)
        except CoercionError as exc:
            raise CoercionError(f"parameter ${position} ({type_name}): {exc}") from None
        changed = changed or new is not value
        converted.append(new)
    if not changed:
        return None
    return (*converted, *args[len(converted) :])


# -- documentation --------------------------------------------------------------------

_SCHEMAS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer", "description": "An integer (numeric text accepted)"},
    "float": {"type": "number", "description": "A number (numeric text accepted)"},
    "decimal": {"type": "string", "format": "decimal", "description": "Exact number as text"},
    "bool": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "time": {"type": "string", "format": "time"},
    "datetime": {"type": "string", "format": "date-time"},
    "timedelta": {"type": "number", "description": "Seconds, or an ISO 8601 duration as text"},
    "bytes": {"type": "string", "contentEncoding": "base64"},
    "uuid": {"type": "string", "format": "uuid"},
    "json": {},
}


def json_schema(param_type: str | None) -> dict[str, Any]:
    """The JSON Schema of a parameter declared as ``param_type`` (None: any value)."""
    if param_type is None or param_type == "json":
        return {}
    schema = dict(_SCHEMAS[param_type])
    schema["type"] = [schema["type"], "null"]
    return schema
