"""max_rows and max_result_bytes bound what is read, on every SQL backend.

Each backend runs the same checks: a row cap truncates, a byte cap refuses
with ``result_too_large`` (naming ``max_result_bytes``), the connection pool
recovers, the options' caps apply where no call passes one (transactions,
guarded SQL), and a 1.5 M-row result or a 150 MB value keeps the process's
peak RSS growth under 50 MB: reading stops at the cap instead of reading
everything and truncating afterwards. MariaDB's server cannot be told to
stop at a row count (see iogate.backends.mysql): there a result of more rows
than ``max_rows`` is truncated within ``max_result_bytes`` and refused past it.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from iogate.backends.base import AsyncDatabaseManager
from iogate.backends.mysql import AsyncMySQLManager
from iogate.backends.postgres import AsyncPostgreSQLManager
from iogate.backends.sqlite import AsyncSQLiteManager
from iogate.core.config import DatabaseOptions
from iogate.core.result import Result
from iogate.core.sqlguard import Access

pytestmark = [pytest.mark.postgres, pytest.mark.mysql]

MiB = 1024 * 1024
GATEWAY_CAPS = {"max_rows": 1000, "max_result_bytes": 16 * MiB}  # the gateway's defaults
MAX_GROWTH_MB = 50


@dataclass(frozen=True)
class Dialect:
    """How to say "n rows" and "one 150 MB row" on one backend."""

    series: Callable[[int], str]  # rows n = 1..count, one integer column
    wide: Callable[[int, int], str]  # count rows of one `width`-character string
    huge_value: str  # a single row of about 150 MB
    # Does reading stop at max_rows + 1 rows? MariaDB's server cannot be told
    # to (see iogate.backends.mysql): rows beyond count against the bytes cap.
    stops_at_max_rows: bool = True


POSTGRES = Dialect(
    series=lambda count: f"SELECT generate_series(1, {count}) AS n",
    wide=lambda count, width: f"SELECT repeat('x', {width}) AS s FROM generate_series(1, {count})",
    huge_value="SELECT repeat('x', 150000000) AS v",
)
MYSQL = Dialect(
    series=lambda count: f"SELECT seq AS n FROM seq_1_to_{count}",
    wide=lambda count, width: f"SELECT REPEAT('x', {width}) AS s FROM seq_1_to_{count}",
    # REPEAT is cut at max_allowed_packet (16 MB), a row is not: ten columns.
    huge_value="SELECT " + ", ".join(f"REPEAT('x', 15000000) AS c{i}" for i in range(10)),
    stops_at_max_rows=False,
)
SQLITE = Dialect(
    series=lambda count: (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r"
        f" WHERE n < {count}) SELECT n FROM r"
    ),
    wide=lambda count, width: (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r"
        f" WHERE n < {count}) SELECT printf('%.*c', {width}, 'x') AS s FROM r"
    ),
    huge_value="SELECT randomblob(150000000) AS v",
)

Factory = Callable[[DatabaseOptions], Awaitable[AsyncDatabaseManager]]


@pytest.fixture(params=["postgresql", "mysql", "sqlite"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Factory, Dialect]]:
    """(make a manager with these options, the backend's dialect); closed after."""
    kind: str = request.param
    made: list[AsyncDatabaseManager] = []

    async def make(options: DatabaseOptions) -> AsyncDatabaseManager:
        manager: AsyncDatabaseManager
        if kind == "postgresql":
            manager = AsyncPostgreSQLManager(
                request.getfixturevalue("postgres_url"), options=options
            )
        elif kind == "mysql":
            manager = AsyncMySQLManager(request.getfixturevalue("mysql_url"), options=options)
        else:
            manager = AsyncSQLiteManager(str(tmp_path / "limits.db"), options=options)
        made.append(manager)
        await manager.initialize_pool()
        return manager

    dialect = {"postgresql": POSTGRES, "mysql": MYSQL, "sqlite": SQLITE}[kind]
    try:
        yield make, dialect
    finally:
        for manager in made:
            await manager.close()


def options(**overrides: Any) -> DatabaseOptions:
    return DatabaseOptions(
        **{"max_connections": 2, "min_connections": 1, "statement_timeout": 30, **overrides}
    )


def assert_rows(result: Result, count: int, *, truncated: bool) -> None:
    assert result.success, result.error
    assert len(result.data) == count
    assert result.truncated is truncated


def assert_too_large(result: Result, cap: int) -> None:
    assert not result.success
    assert result.error_type == "result_too_large", result.error
    assert result.error is not None
    assert f"max_result_bytes ({cap} bytes)" in result.error


# -- caps ------------------------------------------------------------------------------


async def test_rows_cap_truncates(backend: tuple[Factory, Dialect]) -> None:
    make, dialect = backend
    manager = await make(options())
    capped = await manager.execute_query(dialect.series(50), max_rows=10)
    assert capped.success, capped.error
    assert [row["n"] for row in capped.data] == list(range(1, 11))
    assert capped.truncated
    assert_rows(await manager.execute_query(dialect.series(10), max_rows=10), 10, truncated=False)


async def test_bytes_cap_refuses_and_the_pool_recovers(backend: tuple[Factory, Dialect]) -> None:
    make, dialect = backend
    manager = await make(options())
    cap = 64 * 1024
    # 2,000 rows of 100 characters: about 200 kB, over a 64 kB cap.
    refused = await manager.execute_query(dialect.wide(2000, 100), max_result_bytes=cap)
    assert_too_large(refused, cap)
    fits = await manager.execute_query(dialect.wide(100, 100), max_result_bytes=cap)
    assert_rows(fits, 100, truncated=False)
    for _ in range(3):  # every connection of the pool answers again
        again = await manager.execute_query("SELECT 1 AS one", max_result_bytes=cap)
        assert again.data == [{"one": 1}], again.error


async def test_rows_cap_applies_before_the_bytes_cap(backend: tuple[Factory, Dialect]) -> None:
    """Reading stops at max_rows + 1: the rows beyond never count against the
    bytes (on MariaDB they do, and the result is refused instead)."""
    make, dialect = backend
    manager = await make(options())
    cap = 64 * 1024
    result = await manager.execute_query(
        dialect.wide(100_000, 100), max_rows=100, max_result_bytes=cap
    )
    if dialect.stops_at_max_rows:
        assert_rows(result, 100, truncated=True)
    else:
        assert_too_large(result, cap)


async def test_more_rows_than_the_cap_within_the_bytes_are_truncated(
    backend: tuple[Factory, Dialect],
) -> None:
    make, dialect = backend
    manager = await make(options())
    result = await manager.execute_query(dialect.series(5000), **GATEWAY_CAPS)
    assert_rows(result, 1000, truncated=True)
    assert result.data[-1] == {"n": 1000}


async def test_options_caps_apply_without_per_call_ones(
    backend: tuple[Factory, Dialect],
) -> None:
    """Named operations, transactions and guarded SQL get the manager's caps."""
    make, dialect = backend
    cap = 64 * 1024
    manager = await make(options(max_rows=5, max_result_bytes=cap))
    assert_rows(await manager.execute_query(dialect.series(50)), 5, truncated=True)
    guarded = await manager.execute_query(dialect.series(50), guard=Access.READ)
    assert_rows(guarded, 5, truncated=True)
    assert_too_large(await manager.execute_query(dialect.wide(4, 50_000)), cap)
    assert_too_large(await manager.execute_query(dialect.wide(4, 50_000), guard=Access.READ), cap)
    async with manager.transaction() as tx:
        assert_rows(await tx.execute_query(dialect.series(50)), 5, truncated=True)
    after = await manager.execute_query("SELECT 1 AS one")
    assert after.success, after.error


async def test_a_per_call_cap_overrides_the_options(backend: tuple[Factory, Dialect]) -> None:
    make, dialect = backend
    manager = await make(options(max_rows=5))
    result = await manager.execute_query(dialect.series(50), max_rows=20)
    assert_rows(result, 20, truncated=True)


# -- memory ----------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> float:
    """Make VmHWM (the peak RSS) the current RSS, and return that."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    return _status_mb("VmRSS")


async def peak_growth_mb(work: Callable[[], Awaitable[Result]]) -> tuple[Result, float]:
    """``work()``'s result and how far the process's peak RSS rose above its RSS before."""
    before = _reset_peak_rss()
    result = await work()
    return result, _status_mb("VmHWM") - before


async def test_a_million_and_a_half_rows_stay_small(backend: tuple[Factory, Dialect]) -> None:
    make, dialect = backend
    manager = await make(options())
    await manager.execute_query("SELECT 1 AS warm", **GATEWAY_CAPS)
    result, growth = await peak_growth_mb(
        lambda: manager.execute_query(dialect.series(1_500_000), **GATEWAY_CAPS)
    )
    if dialect.stops_at_max_rows:
        assert_rows(result, 1000, truncated=True)
    else:
        assert_too_large(result, GATEWAY_CAPS["max_result_bytes"])
    assert growth < MAX_GROWTH_MB, f"peak RSS grew {growth:.0f} MB"


async def test_rows_bounded_by_bytes_alone_stay_small(backend: tuple[Factory, Dialect]) -> None:
    """No row cap: a million and a half small rows are refused at the byte cap,
    whose count includes what each row costs in Python, not only its bytes."""
    make, dialect = backend
    manager = await make(options())
    result, growth = await peak_growth_mb(
        lambda: manager.execute_query(dialect.series(1_500_000), max_result_bytes=16 * MiB)
    )
    assert_too_large(result, 16 * MiB)
    assert growth < MAX_GROWTH_MB, f"peak RSS grew {growth:.0f} MB"


async def test_a_150_mb_value_stays_small(backend: tuple[Factory, Dialect]) -> None:
    make, dialect = backend
    manager = await make(options())
    await manager.execute_query("SELECT 1 AS warm", **GATEWAY_CAPS)
    for guard in (None, Access.READ):
        result, growth = await peak_growth_mb(
            lambda guard=guard: manager.execute_query(
                dialect.huge_value, guard=guard, **GATEWAY_CAPS
            )
        )
        assert_too_large(result, 16 * MiB)
        assert growth < MAX_GROWTH_MB, f"peak RSS grew {growth:.0f} MB ({guard})"
    after = await manager.execute_query("SELECT 1 AS one", **GATEWAY_CAPS)
    assert after.success, after.error


# -- what a cut result means for writes ----------------------------------------------------


async def test_a_guarded_write_whose_result_is_too_large_writes_nothing(
    backend: tuple[Factory, Dialect], table_name: str
) -> None:
    make, _ = backend
    manager = await make(options())
    created = await manager.execute_query(f"CREATE TABLE {table_name} (s TEXT)")
    assert created.success, created.error
    try:
        marks = ["$1", "$2", "$3", "$4"] if isinstance(manager, AsyncPostgreSQLManager) else "????"
        seeded = await manager.execute_query(
            f"INSERT INTO {table_name} (s) VALUES " + ", ".join(f"({m})" for m in marks),
            ["x" * 40_000, "y" * 40_000, "z" * 40_000, "w" * 40_000],
        )
        assert seeded.success, seeded.error
        cap = 64 * 1024
        if isinstance(manager, AsyncMySQLManager):
            write = f"DELETE FROM {table_name} RETURNING s"
        else:
            write = f"UPDATE {table_name} SET s = s || 'more' RETURNING s"
        result = await manager.execute_query(write, guard=Access.WRITE, max_result_bytes=cap)
        assert_too_large(result, cap)
        rows = await manager.execute_query(f"SELECT s FROM {table_name} ORDER BY s")
        assert rows.success, rows.error
        assert [len(row["s"]) for row in rows.data] == [40_000] * 4  # unchanged
    finally:
        await manager.execute_query(f"DROP TABLE {table_name}")


async def test_postgres_row_limit_keeps_the_statement_text(
    postgres_url: str, table_name: str
) -> None:
    """The row cap is the protocol's (Execute's row count), not a LIMIT: a
    write runs to completion and only its returned rows are cut. This also
    pins the asyncpg internals the limit is sent through."""
    manager = AsyncPostgreSQLManager(postgres_url, options=options())
    async with manager:
        await manager.execute_query(f"CREATE TABLE {table_name} (n int)")
        try:
            inserted = await manager.execute_query(
                f"INSERT INTO {table_name} SELECT generate_series(1, 50) RETURNING n",
                max_rows=10,
            )
            assert_rows(inserted, 10, truncated=True)
            count = await manager.execute_query(f"SELECT count(*) AS c FROM {table_name}")
            assert count.data == [{"c": 50}]
        finally:
            await manager.execute_query(f"DROP TABLE {table_name}")
