"""What the SQLite backend reads from statements and errors (backends/sqlite/dialect.py)."""

from __future__ import annotations

import re
import sqlite3

import pytest

from iogate.backends.sqlite.dialect import bind, map_error, to_result
from iogate.core.errors import (
    DatabaseConnectionError,
    OperationTimeoutError,
    ParameterError,
    QueryError,
    ReadOnlyError,
)


def test_question_marks_bind_by_position() -> None:
    assert bind("  -- note\n select ? , ?", (1, 2)) == ("SELECT", (1, 2))


def test_dollar_placeholders_bind_by_name_whatever_their_order() -> None:
    assert bind("UPDATE t SET a = $2 WHERE id = $1", (7, "x")) == (
        "UPDATE",
        {"1": 7, "2": "x"},
    )


@pytest.mark.parametrize(
    ("query", "args", "message"),
    [
        ("SELECT ?", (), "expects 1 parameter, got 0"),
        ("SELECT ?, ?", (1,), "expects 2 parameters, got 1"),
        ("SELECT ?, $1", (1, 2), "mixes ? and $n"),
    ],
)
def test_a_parameter_mismatch_is_refused_before_running(
    query: str, args: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ParameterError, match=re.escape(message)):
        bind(query, args)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (sqlite3.OperationalError("interrupted"), OperationTimeoutError),
        (sqlite3.OperationalError("attempt to write a readonly database"), ReadOnlyError),
        (sqlite3.OperationalError("unable to open database file"), DatabaseConnectionError),
        (sqlite3.IntegrityError("UNIQUE constraint failed: t.x"), QueryError),
        (OverflowError("Python int too large to convert to SQLite INTEGER"), ParameterError),
    ],
)
def test_driver_errors_map_to_iogate_errors(error: Exception, expected: type[Exception]) -> None:
    assert type(map_error(error)) is expected


def test_a_trusted_insert_reports_its_rowid_and_a_read_no_rowcount() -> None:
    insert = to_result(([], 1, False, 42), "INSERT")
    assert (insert.rows_affected, insert.last_insert_id) == (1, 42)
    read = to_result(([{"x": 1}], -1, True, None), "SELECT")
    assert (read.data, read.rows_affected, read.truncated) == ([{"x": 1}], None, True)
    two = to_result(([], 2, False, 9), "INSERT")
    assert (two.rows_affected, two.last_insert_id) == (2, None)


def test_a_guarded_statement_reports_rows_but_never_a_rowid() -> None:
    insert = to_result(([], 1, False, 42), None)
    assert (insert.rows_affected, insert.last_insert_id) == (1, None)
