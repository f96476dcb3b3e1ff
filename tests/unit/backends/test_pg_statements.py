"""Which statements may go through asyncpg's pipelined executemany."""

from __future__ import annotations

import pytest

from iogate.backends.postgres import is_single_row_insert


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO t (a, b) VALUES ($1, $2)",
        "insert into t values ($1, lower($2));",
        "INSERT INTO t (a) VALUES ('a)(b', $1)",
        "INSERT INTO t (a) VALUES ((SELECT max(x) FROM y WHERE z = $1))",
        "  INSERT INTO s.t\n(a)\nVALUES\n($1)  ",
    ],
)
def test_single_row_inserts(query: str) -> None:
    assert is_single_row_insert(query)


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO t (a) VALUES ($1), ($2)",
        "INSERT INTO t (a) VALUES ($1) ON CONFLICT DO NOTHING",
        "INSERT INTO t (a) VALUES ($1) RETURNING id",
        "INSERT INTO t (a) SELECT x FROM y WHERE x = $1",
        "INSERT INTO t DEFAULT VALUES",
        "UPDATE t SET a = $1",
        "WITH x AS (SELECT 1) INSERT INTO t (a) VALUES ($1)",
        "INSERT INTO t (a) VALUES ($1",
        "INSERT INTO t (a) VALUES ($1); DELETE FROM t",
    ],
)
def test_anything_else_is_not(query: str) -> None:
    assert not is_single_row_insert(query)
