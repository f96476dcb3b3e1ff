"""SQL managers against the raw drivers, interleaved in one process.

PostgreSQL: AsyncPostgreSQLManager vs an asyncpg pool (``SELECT $1::int`` and a
point lookup on a 100k-row table) at concurrency 1, 10 and 50, both on 10
connections. SQLite: AsyncSQLiteManager vs aiosqlite vs plain sqlite3 for
point reads and durable single-row writes at concurrency 1 and 50.

Each variant runs once per round, variants alternating (A B A B ...), so
drift of the machine hits all of them alike; the table shows the median of
the rounds with the spread (min-max). Loopback only.

Run: ``.venv/bin/python -m bench.db_bench [--quick] [--rounds N] [--only sqlite]
[--sqlite-baseline OLD_SQLITE_PACKAGE_OR_PY]``.
The "CPU us/op" column is process CPU time (all threads) per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite
import asyncpg

from iogate import AsyncPostgreSQLManager, AsyncSQLiteManager, DatabaseOptions

PG_URL = os.environ.get("IOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TABLE = "iogate_bench_users"
ROWS = 100_000

Call = Callable[[int], Awaitable[object]]


@dataclass
class Measure:
    name: str
    throughput: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


async def drive(call: Call, concurrency: int, total: int) -> tuple[float, float, float, float]:
    """Ops/s, p50 and p99 latency (ms), CPU us/op of ``total`` calls from ``concurrency`` tasks.

    CPU time is the whole process's (every thread, via ``time.process_time``):
    unlike ops/s it barely moves when other work shares the machine.
    """
    per_task = max(1, total // concurrency)
    latencies: list[float] = []

    async def worker(offset: int) -> None:
        for i in range(per_task):
            started = time.perf_counter()
            await call(offset * per_task + i)
            latencies.append(time.perf_counter() - started)

    cpu_started = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    done = per_task * concurrency
    return done / elapsed, p50, p99, cpu / done * 1e6


async def interleave(
    variants: dict[str, Call], concurrency: int, total: int, rounds: int
) -> list[Measure]:
    measures = {name: Measure(name) for name in variants}
    for call in variants.values():  # warm-up
        await drive(call, concurrency, max(50, total // 10))
    for _ in range(rounds):
        for name, call in variants.items():
            ops, p50, p99, cpu_us = await drive(call, concurrency, total)
            m = measures[name]
            m.throughput.append(ops)
            m.p50_ms.append(p50)
            m.p99_ms.append(p99)
            m.cpu_us.append(cpu_us)
    return list(measures.values())


def table_rows(title: str, concurrency: int, measures: list[Measure]) -> list[str]:
    base = statistics.median(measures[-1].throughput)
    rows = []
    for m in measures:
        med = statistics.median(m.throughput)
        rows.append(
            f"| {title} | {concurrency} | {m.name} | {med:,.0f} "
            f"({min(m.throughput):,.0f}-{max(m.throughput):,.0f}) | "
            f"{statistics.median(m.p50_ms):.2f} | {statistics.median(m.p99_ms):.2f} | "
            f"{statistics.median(m.cpu_us):.0f} | {med / base:.0%} |"
        )
    return rows


async def postgres(total: int, rounds: int, concurrencies: tuple[int, ...]) -> list[str]:
    setup = await asyncpg.connect(PG_URL)
    exists = await setup.fetchval("SELECT to_regclass($1)", TABLE)
    if exists is None:
        await setup.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name text, score int)")
        await setup.execute(
            f"INSERT INTO {TABLE} SELECT g, 'user' || g, g % 100 FROM generate_series(1, {ROWS}) g"
        )
    await setup.close()
    manager = AsyncPostgreSQLManager(
        PG_URL, options=DatabaseOptions(min_connections=10, max_connections=10)
    )
    await manager.initialize_pool()
    pool = await asyncpg.create_pool(PG_URL, min_size=10, max_size=10)
    assert pool is not None
    rows: list[str] = []
    try:
        for label, query in (
            ("PG SELECT $1::int", "SELECT $1::int AS v"),
            ("PG point lookup", f"SELECT * FROM {TABLE} WHERE id = $1"),
        ):

            async def lib(i: int, q: str = query) -> object:
                result = await manager.execute_query(q, [i % ROWS + 1])
                assert result.success, result.error
                return result

            async def raw(i: int, q: str = query) -> object:
                async with pool.acquire() as conn:
                    return [dict(r) for r in await conn.fetch(q, i % ROWS + 1)]

            for concurrency in concurrencies:
                measures = await interleave(
                    {"iogate": lib, "asyncpg pool": raw}, concurrency, total, rounds
                )
                rows += table_rows(label, concurrency, measures)
    finally:
        await manager.close()
        await pool.close()
    return rows


def load_sqlite_baseline(path: str) -> type[AsyncSQLiteManager]:
    """AsyncSQLiteManager from another version of the SQLite backend, for an A/B in one process.

    ``path`` is a copy of the ``backends/sqlite`` package (``git archive REV
    src/iogate/backends/sqlite | tar -x -C /tmp/old``, then
    ``/tmp/old/src/iogate/backends/sqlite``) or, for revisions before it
    became a package, of ``sqlite.py`` (``git show REV:src/iogate/backends/sqlite.py
    > /tmp/old_sqlite.py``). It shares the rest of iogate (core, base class)
    with the current code; the package's modules import each other relatively
    so that the copy uses its own.
    """
    folder = Path(path)
    if folder.is_dir():
        spec = importlib.util.spec_from_file_location(
            "iogate_sqlite_baseline",
            folder / "__init__.py",
            submodule_search_locations=[str(folder)],
        )
    else:
        spec = importlib.util.spec_from_file_location("iogate_sqlite_baseline", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--sqlite-baseline: cannot load {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    baseline: type[AsyncSQLiteManager] = module.AsyncSQLiteManager
    return baseline


async def sqlite(
    total: int, rounds: int, concurrencies: tuple[int, ...], baseline: str | None = None
) -> list[str]:
    folder = tempfile.mkdtemp(prefix="iogate-bench-")
    path = os.path.join(folder, "bench.db")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany(
            "INSERT INTO users VALUES (?, ?)", ((i, f"user{i}") for i in range(1, 10_001))
        )
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
    manager = AsyncSQLiteManager(path, max_connections=5)
    await manager.initialize_pool()
    other = load_sqlite_baseline(baseline)(path, max_connections=5) if baseline else None
    if other is not None:
        await other.initialize_pool()
    adb = await aiosqlite.connect(path, isolation_level=None)
    await adb.execute("PRAGMA synchronous=NORMAL")
    plain = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    plain.execute("PRAGMA synchronous=NORMAL")
    rows: list[str] = []
    try:

        async def lib_read(i: int) -> object:
            return await manager.execute_query("SELECT * FROM users WHERE id = ?", [i % 10_000 + 1])

        async def aio_read(i: int) -> object:
            return await adb.execute_fetchall("SELECT * FROM users WHERE id = ?", (i % 10_000 + 1,))

        async def plain_read(i: int) -> object:
            return plain.execute("SELECT * FROM users WHERE id = ?", (i % 10_000 + 1,)).fetchall()

        async def lib_write(i: int) -> object:
            return await manager.execute_query("INSERT INTO events (v) VALUES (?)", ["x"])

        async def aio_write(i: int) -> object:
            return await adb.execute("INSERT INTO events (v) VALUES (?)", ("x",))

        async def plain_write(i: int) -> object:
            return plain.execute("INSERT INTO events (v) VALUES (?)", ("x",))

        reads: dict[str, Call] = {"iogate": lib_read}
        writes: dict[str, Call] = {"iogate": lib_write}
        if other is not None:

            async def base_read(i: int) -> object:
                return await other.execute_query(
                    "SELECT * FROM users WHERE id = ?", [i % 10_000 + 1]
                )

            async def base_write(i: int) -> object:
                return await other.execute_query("INSERT INTO events (v) VALUES (?)", ["x"])

            reads["iogate baseline"] = base_read
            writes["iogate baseline"] = base_write
        reads.update({"sqlite3 (blocking)": plain_read, "aiosqlite": aio_read})
        writes.update({"sqlite3 (blocking)": plain_write, "aiosqlite": aio_write})
        for concurrency in concurrencies:
            rows += table_rows(
                "SQLite point read",
                concurrency,
                await interleave(reads, concurrency, total, rounds),
            )
            rows += table_rows(
                "SQLite durable write",
                concurrency,
                await interleave(writes, concurrency, total, rounds),
            )
    finally:
        await manager.close()
        if other is not None:
            await other.close()
        await adb.close()
        plain.close()
    return rows


HEADER = [
    "| work | concurrency | variant | ops/s median (min-max) | p50 ms | p99 ms "
    "| CPU us/op | vs last row |",
    "|---|---|---|---|---|---|---|---|",
]


async def main_async(
    quick: bool, rounds: int, only: str | None, sqlite_baseline: str | None
) -> list[str]:
    total = 2_000 if quick else 10_000
    rows: list[str] = []
    if only in (None, "postgres"):
        rows += await postgres(total, rounds, (1, 50) if quick else (1, 10, 50))
    if only in (None, "sqlite"):
        rows += await sqlite(total, rounds, (1, 50), sqlite_baseline)
    return HEADER + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--only", choices=["postgres", "sqlite"], help="run one backend's part")
    parser.add_argument(
        "--sqlite-baseline",
        metavar="PATH",
        help="another version of the sqlite package (or sqlite.py), as 'iogate baseline'",
    )
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    for line in asyncio.run(main_async(args.quick, args.rounds, args.only, args.sqlite_baseline)):
        print(line)


if __name__ == "__main__":
    main()
