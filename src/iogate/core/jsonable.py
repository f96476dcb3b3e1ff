"""Database values made JSON-friendly, the same way for every backend.

| Python value          | becomes                                         |
|-----------------------|-------------------------------------------------|
| str, int, float, bool, None, dict, list | unchanged (dict/list converted recursively) |
| uuid.UUID             | canonical string ``"8-4-4-4-12"``               |
| decimal.Decimal       | string (exact; ``"12.50"``), so no precision is lost |
| datetime.datetime     | ISO 8601 (``"2026-11-21T19:21:43.123456+00:00"``; naive stays naive) |
| datetime.date / time  | ISO 8601                                        |
| datetime.timedelta    | seconds as a float                              |
| bytes / memoryview    | base64 string                                   |
| ipaddress / other     | ``str(value)``                                  |
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["jsonable", "row_to_dict"]

_PASS = (str, int, float, bool, type(None))


def jsonable(value: Any) -> Any:
    if isinstance(value, _PASS):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return str(value)


def row_to_dict(keys: Iterable[str], values: Iterable[Any]) -> dict[str, Any]:
    return {
        key: value if isinstance(value, _PASS) else jsonable(value)
        for key, value in zip(keys, values, strict=True)
    }
