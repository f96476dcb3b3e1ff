"""Batches vs the same operations one by one, and a mixed batch vs raw drivers.

1. **Grouped work**: 1,000 Redis SETs and 1,000 identical PostgreSQL INSERTs
   through ``execute_batch`` (Redis as one pipeline, the INSERTs as one
   ``execute_many``), without grouping, and awaited one by one.
2. **Mixed batch**: 1,000 operations interleaved -- PostgreSQL point selects
   and inserts, Redis GET/SET, SQLite point reads, and GETs to a local
   aiohttp upstream -- through ``execute_batch_operations`` (default
   concurrency 10, and 100), awaited one by one through the orchestrator,
   and as ``asyncio.gather`` of the raw driver calls (asyncpg pool,
   redis.asyncio, aiosqlite, aiohttp; every call at once, bounded only by the
   pools) -- what a hand-written script would do.

Variants alternate within each round (A B C D, A B C D, ...) and the tables
show the median of the rounds; "CPU us/op" is this process's CPU time per
operation (the upstream runs in this process too, the same for every
variant). Loopback servers only; tables and keys are removed at the end.

Run: ``.venv/bin/python bench/batch_bench.py [--quick] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiosqlite
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from iogate.core.result import Result
from iogate.orchestrator import AsyncOperationOrchestrator, DatabaseType
from iogate.orchestrator.batch import execute_batch

PG = os.environ.get("IOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("IOGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
N = 1000
ROWS = 10_000
PG_POOL = 10

Variant = Callable[[], Awaitable[int]]  # runs the workload, returns how many succeeded
Figures = dict[str, list[tuple[float, float]]]  # variant -> (ms, CPU us/op) per round


async def measure(variants: dict[str, Variant], rounds: int) -> Figures:
    """(ms, CPU us/op) per round for each variant, interleaved, after one warm-up each."""
    figures: Figures = {name: [] for name in variants}
    for name, run in variants.items():
        succeeded = await run()
        if succeeded != N:
            raise RuntimeError(f"{name}: {N - succeeded} of {N} operations failed in warm-up")
    for _ in range(rounds):
        for name, run in variants.items():
            cpu = time.process_time()
            started = time.perf_counter()
            succeeded = await run()
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            if succeeded != N:
                raise RuntimeError(f"{name}: {N - succeeded} of {N} operations failed")
            figures[name].append((elapsed * 1000, cpu / N * 1e6))
    return figures


def table(title: str, figures: Figures, base: str) -> list[str]:
    base_ms = statistics.median(ms for ms, _ in figures[base])
    lines = [
        f"| {title} | ms median (min-max) | ops/s | CPU us/op | vs {base} |",
        "|---|---|---|---|---|",
    ]
    for name, rounds in figures.items():
        times = [ms for ms, _ in rounds]
        ms = statistics.median(times)
        cpu = statistics.median(us for _, us in rounds)
        lines.append(
            f"| {name} | {ms:,.1f} ({min(times):,.1f}-{max(times):,.1f}) | {N / ms * 1000:,.0f} "
            f"| {cpu:.0f} | {base_ms / ms:.1f}x |"
        )
    return lines


def succeeded(results: list[Result]) -> int:
    return sum(1 for r in results if r.success)


# -- 1. grouped work -----------------------------------------------------------------


async def grouped(orch: AsyncOperationOrchestrator, table_name: str, rounds: int) -> list[str]:
    insert = f"INSERT INTO {table_name} (name, n) VALUES ($1, $2)"
    sql_ops = [
        {"type": "database", "db_name": "pg", "query": insert, "params": [f"r{i}", i]}
        for i in range(N)
    ]
    kv_ops = [
        {
            "type": "database",
            "db_name": "redis",
            "query": f"bench:{i}",
            "params": {"operation": "set", "value": i},
        }
        for i in range(N)
    ]
    lines: list[str] = []
    for label, ops in (("Redis SET x1,000", kv_ops), ("PostgreSQL INSERT x1,000", sql_ops)):

        async def one_by_one(ops: list[dict[str, Any]] = ops) -> int:
            done = 0
            for op in ops:
                r = await orch.execute_database_operation(op["db_name"], op["query"], op["params"])
                done += r.success
            return done

        async def batch(ops: list[dict[str, Any]] = ops) -> int:
            return succeeded(await execute_batch(orch, ops))

        async def ungrouped(ops: list[dict[str, Any]] = ops) -> int:
            return succeeded(await execute_batch(orch, ops, group=False))

        figures = await measure(
            {
                "awaited one by one": one_by_one,
                "execute_batch_operations": batch,
                "batch without grouping": ungrouped,
            },
            rounds,
        )
        lines += [*table(label, figures, "awaited one by one"), ""]
    return lines


# -- 2. mixed batch ------------------------------------------------------------------


def mixed_operations(table_name: str, insert_table: str, api_port: int) -> list[dict[str, Any]]:
    """N operations, kinds interleaved: what one request handler might fan out."""
    select = f"SELECT id, name FROM {table_name} WHERE id = $1"
    insert = f"INSERT INTO {insert_table} (name, n) VALUES ($1, $2)"
    kinds: list[Callable[[int], dict[str, Any]]] = [
        lambda i: {"type": "database", "db_name": "pg", "query": select, "params": [i % ROWS + 1]},
        lambda i: {"type": "database", "db_name": "pg", "query": insert, "params": [f"m{i}", i]},
        lambda i: {
            "type": "database",
            "db_name": "redis",
            "query": f"bench:mixed:{i % 100}",
            "params": {"operation": "set", "value": i},
        },
        lambda i: {
            "type": "database",
            "db_name": "redis",
            "query": f"bench:mixed:{i % 100}",
            "params": {"operation": "get"},
        },
        lambda i: {
            "type": "database",
            "db_name": "sqlite",
            "query": "SELECT id, name FROM items WHERE id = ?",
            "params": [i % ROWS + 1],
        },
        lambda i: {"type": "api", "api_name": "api", "method": "GET", "endpoint": f"/items/{i}"},
    ]
    return [kinds[i % len(kinds)](i) for i in range(N)]


async def mixed(
    orch: AsyncOperationOrchestrator,
    table_name: str,
    insert_table: str,
    sqlite_path: str,
    api_port: int,
    rounds: int,
) -> list[str]:
    ops = mixed_operations(table_name, insert_table, api_port)
    pool = await asyncpg.create_pool(PG, min_size=PG_POOL, max_size=PG_POOL)
    redis_client = aioredis.Redis.from_url(REDIS)
    lite = await aiosqlite.connect(sqlite_path)
    session = aiohttp.ClientSession(f"http://127.0.0.1:{api_port}")
    try:

        async def raw_call(op: dict[str, Any]) -> bool:
            if op["type"] == "api":
                async with session.get(op["endpoint"]) as response:
                    await response.json()
                    return response.status == 200
            if op["db_name"] == "pg":
                await pool.fetch(op["query"], *op["params"])
            elif op["db_name"] == "sqlite":
                await lite.execute_fetchall(op["query"], op["params"])
            elif op["params"]["operation"] == "set":
                await redis_client.set(op["query"], op["params"]["value"])
            else:
                await redis_client.get(op["query"])
            return True

        async def one_by_one() -> int:
            done = 0
            for op in ops:
                if op["type"] == "api":
                    r = await orch.execute_api_operation("api", "GET", op["endpoint"])
                else:
                    r = await orch.execute_database_operation(
                        op["db_name"], op["query"], op["params"]
                    )
                done += r.success
            return done

        async def batch() -> int:
            return succeeded(await orch.execute_batch_operations(ops))

        async def batch_100() -> int:
            return succeeded(await orch.execute_batch_operations(ops, concurrency=100))

        async def raw_gather() -> int:
            return sum(await asyncio.gather(*(raw_call(op) for op in ops)))

        figures = await measure(
            {
                "awaited one by one (iogate)": one_by_one,
                "execute_batch_operations (concurrency 10, the default)": batch,
                "execute_batch_operations (concurrency 100)": batch_100,
                "asyncio.gather of raw driver calls": raw_gather,
            },
            rounds,
        )
    finally:
        await session.close()
        await lite.close()
        await redis_client.aclose()
        await pool.close()
    mix = "PG select + insert, Redis SET + GET, SQLite read, API GET: 1/6 each"
    return [*table(f"Mixed x1,000 ({mix})", figures, "awaited one by one (iogate)"), ""]


# -- set-up ----------------------------------------------------------------------------


async def upstream() -> tuple[web.AppRunner, int]:
    async def item(request: web.Request) -> web.Response:
        return web.json_response({"id": int(request.match_info["id"]), "ok": True})

    app = web.Application()
    app.router.add_get("/items/{id}", item)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


def make_sqlite(folder: str) -> str:
    path = os.path.join(folder, "batch.db")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany(
            "INSERT INTO items VALUES (?, ?)", ((i, f"item-{i}") for i in range(1, ROWS + 1))
        )
    return path


async def main(rounds: int) -> None:
    suffix = uuid.uuid4().hex[:8]
    inserts, items, mixed_inserts = f"bench_{suffix}", f"bench_items_{suffix}", f"bench_m_{suffix}"
    folder = tempfile.mkdtemp(prefix="iogate-batch-")
    sqlite_path = make_sqlite(folder)
    runner, api_port = await upstream()
    lines: list[str] = []
    try:
        async with AsyncOperationOrchestrator() as orch:
            await orch.add_database_manager(
                "pg", DatabaseType.POSTGRESQL, PG, max_connections=PG_POOL
            )
            await orch.add_database_manager("redis", DatabaseType.REDIS, REDIS)
            await orch.add_database_manager("sqlite", DatabaseType.SQLITE, sqlite_path)
            await orch.add_api_manager("api", f"http://127.0.0.1:{api_port}")
            for statement in (
                f"CREATE TABLE {inserts} (name text, n int)",
                f"CREATE TABLE {mixed_inserts} (name text, n int)",
                f"CREATE TABLE {items} (id int PRIMARY KEY, name text)",
                f"INSERT INTO {items} SELECT g, 'item-' || g FROM generate_series(1, {ROWS}) g",
            ):
                created = await orch.execute_database_operation("pg", statement)
                assert created.success, created.error
            try:
                lines += await grouped(orch, inserts, rounds)
                lines += await mixed(orch, items, mixed_inserts, sqlite_path, api_port, rounds)
            finally:
                await orch.execute_database_operation(
                    "pg", f"DROP TABLE IF EXISTS {inserts}, {mixed_inserts}, {items}"
                )
                keys = [f"bench:{i}" for i in range(N)] + [f"bench:mixed:{i}" for i in range(100)]
                await orch.execute_database_operation(
                    "redis", "k", {"operation": "delete", "keys": keys}
                )
    finally:
        await runner.cleanup()
    load = os.getloadavg()[0]
    print("\n".join(lines))
    print(f"Median of {rounds} interleaved rounds; load average {load:.1f} at the end.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1 round (default 5)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    args = parser.parse_args()
    asyncio.run(main(args.rounds or (1 if args.quick else 5)))
