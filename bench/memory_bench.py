"""Memory per manager: RSS and Python allocations of one open manager vs the raw driver.

Each measurement runs in a fresh interpreter, so nothing another measurement
imported or allocated is counted. The child process:

1. imports the driver (asyncpg, sqlite3, asyncmy, redis, aiohttp) -- RSS **driver**;
2. imports the iogate backend module (iogate variants only) -- RSS **import**;
3. creates and opens one manager (or the raw driver's pool/session) and runs
   ``QUERIES`` operations one after another -- RSS **open**.

The figure that matters is **open - import**: what one manager costs beyond
the code that every process using it loads once (the issue's target: at
most 2 MB). Before each RSS reading the child collects garbage and calls
glibc's ``malloc_trim(0)``, so freed heap returned to the OS is not counted.
A second child per row runs the same steps under ``tracemalloc`` (started
after the imports) for the Python-heap share: current and peak allocations.

Variants: iogate's manager with its default pool sizes, with
``min_connections=1`` where that differs, and the raw driver's pool or
connection as an application would create it. Loopback servers only.

Run: ``.venv/bin/python bench/memory_bench.py [--quick] [--only postgresql,sqlite]``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

PG_URL = os.environ.get("IOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("IOGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
MYSQL_URL = os.environ.get("IOGATE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
QUERIES = 20
PAGE = os.sysconf("SC_PAGE_SIZE")

# kind -> variants, in table order; the driver each variant imports first.
# "concurrent": the QUERIES operations run at once, so a pool grows to its size.
VARIANTS: dict[str, list[str]] = {
    "postgresql": [
        "iogate (min_connections=1, the default)",
        "asyncpg pool (min 1, max 20)",
        "asyncpg pool (defaults 10/10)",
        "iogate, concurrent",
        "asyncpg pool (min 1, max 20), concurrent",
    ],
    "sqlite": [
        "iogate (writer + 4 readers, the default)",
        "iogate max_connections=2 (writer + 1 reader)",
        "aiosqlite (1 connection)",
    ],
    "mysql": ["iogate", "asyncmy pool (min 1, max 10)"],
    "redis": ["iogate", "iogate auto_pipeline=False", "redis.asyncio (pool)"],
    "api": ["iogate", "aiohttp ClientSession"],
    "memory": ["iogate"],
}


# -- child side ------------------------------------------------------------------


def rss_mb() -> float:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    resident = int(Path("/proc/self/statm").read_text().split()[1])
    return resident * PAGE / 1024 / 1024


def sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def import_driver(kind: str, variant: str) -> None:
    if kind == "postgresql":
        import asyncpg  # noqa: F401
    elif kind == "sqlite":
        import sqlite3  # noqa: F401

        if variant.startswith("aiosqlite"):
            import aiosqlite  # noqa: F401
    elif kind == "mysql":
        import asyncmy  # noqa: F401
    elif kind == "redis":
        import redis.asyncio  # noqa: F401
    elif kind == "api":
        import aiohttp.web  # noqa: F401  (aiohttp, and the local upstream's server)


def import_iogate(kind: str) -> None:
    import iogate.backends.base  # noqa: F401

    module = {
        "postgresql": "iogate.backends.postgres",
        "sqlite": "iogate.backends.sqlite",
        "mysql": "iogate.backends.mysql",
        "redis": "iogate.backends.redis",
        "api": "iogate.backends.http",
        "memory": "iogate.backends.memory",
    }[kind]
    __import__(module)


async def open_and_query(kind: str, variant: str, folder: str) -> tuple[Any, Callable[[], Any]]:
    """Open the thing measured, run QUERIES operations; return it and its closer."""
    if kind == "postgresql":
        return await _postgres(variant)
    if kind == "sqlite":
        return await _sqlite(variant, folder)
    if kind == "mysql":
        return await _mysql(variant)
    if kind == "redis":
        return await _redis(variant)
    if kind == "memory":
        from iogate.backends.memory import AsyncMemoryManager

        manager = AsyncMemoryManager()
        await manager.initialize_pool()
        for i in range(QUERIES):
            await manager.execute_query(f"k{i % 5}", {"operation": "set", "value": i})
        return manager, manager.close
    raise ValueError(f"unknown kind {kind!r}")


async def repeat(operation: Callable[[int], Awaitable[object]], concurrent: bool) -> None:
    """QUERIES operations, one after another or all at once."""
    if concurrent:
        await asyncio.gather(*(operation(i) for i in range(QUERIES)))
    else:
        for i in range(QUERIES):
            await operation(i)


async def _postgres(variant: str) -> tuple[Any, Callable[[], Any]]:
    concurrent = "concurrent" in variant
    if variant.startswith("iogate"):
        from iogate.backends.postgres import AsyncPostgreSQLManager

        manager = AsyncPostgreSQLManager(PG_URL)
        await manager.initialize_pool()

        async def query(i: int) -> None:
            # pg_sleep: concurrent queries overlap, so the pool really grows.
            result = await manager.execute_query("SELECT $1::int AS v, pg_sleep(0.05)", [i])
            assert result.success, result.error

        await repeat(query, concurrent)
        return manager, manager.close
    import asyncpg

    sizes = {"min_size": 1, "max_size": 20} if "min 1" in variant else {}
    pool = await asyncpg.create_pool(PG_URL, **sizes)

    async def raw(i: int) -> None:
        await pool.fetch("SELECT $1::int AS v, pg_sleep(0.05)", i)

    await repeat(raw, concurrent)
    return pool, pool.close


async def _sqlite(variant: str, folder: str) -> tuple[Any, Callable[[], Any]]:
    path = os.path.join(folder, "memory.db")
    if variant.startswith("iogate"):
        from iogate.backends.sqlite import AsyncSQLiteManager
        from iogate.core.config import DatabaseOptions

        # SQLite opens its writer and every reader at start (min_connections
        # is not used), so the variant is the connection count.
        if "max_connections=2" in variant:
            manager = AsyncSQLiteManager(path, options=DatabaseOptions(max_connections=2))
        else:
            manager = AsyncSQLiteManager(path)
        await manager.initialize_pool()
        for i in range(QUERIES):
            result = await manager.execute_query("SELECT ? AS v", [i])
            assert result.success, result.error
        return manager, manager.close
    import aiosqlite

    connection = await aiosqlite.connect(path)
    for i in range(QUERIES):
        await connection.execute_fetchall("SELECT ? AS v", (i,))
    return connection, connection.close


async def _mysql(variant: str) -> tuple[Any, Callable[[], Any]]:
    if variant.startswith("iogate"):
        from iogate.backends.mysql import AsyncMySQLManager

        manager = AsyncMySQLManager(MYSQL_URL)
        await manager.initialize_pool()
        for i in range(QUERIES):
            result = await manager.execute_query("SELECT %s AS v", [i])
            assert result.success, result.error
        return manager, manager.close
    from urllib.parse import urlsplit

    import asyncmy

    parts = urlsplit(MYSQL_URL)
    pool = await asyncmy.create_pool(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        db=parts.path.lstrip("/") or None,
        minsize=1,
        maxsize=10,
    )
    for i in range(QUERIES):
        async with pool.acquire() as conn, conn.cursor() as cursor:
            await cursor.execute("SELECT %s AS v", (i,))
            await cursor.fetchall()

    async def close() -> None:
        pool.close()
        await pool.wait_closed()

    return pool, close


async def _redis(variant: str) -> tuple[Any, Callable[[], Any]]:
    if variant.startswith("iogate"):
        from iogate.backends.redis import AsyncRedisManager

        manager = AsyncRedisManager(REDIS_URL, auto_pipeline="False" not in variant)
        await manager.initialize_pool()
        for i in range(QUERIES):
            result = await manager.execute_query(
                "iogate:memory:bench", {"operation": "set", "value": i}
            )
            assert result.success, result.error
        return manager, manager.close
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    for i in range(QUERIES):
        await client.set("iogate:memory:bench", i)
    return client, client.aclose


async def _api(variant: str, base_url: str) -> tuple[Any, Callable[[], Any]]:
    if variant.startswith("iogate"):
        from iogate.backends.http import AsyncAPIManager

        manager = AsyncAPIManager(base_url)
        await manager.initialize_session()
        for _ in range(QUERIES):
            result = await manager.get("/ok")
            assert result.success, result.error
        return manager, manager.close
    import aiohttp

    session = aiohttp.ClientSession(base_url)
    for _ in range(QUERIES):
        async with session.get("/ok") as response:
            await response.json()
    return session, session.close


async def child(kind: str, variant: str, trace: bool) -> dict[str, Any]:
    import tracemalloc

    figures: dict[str, Any] = {"kind": kind, "variant": variant, "start": rss_mb()}
    import_driver(kind, variant)
    runner = None
    base_url = ""
    if kind == "api":  # the local upstream runs in every variant, inside the baseline
        from aiohttp import web

        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        upstream = web.Application()
        upstream.router.add_get("/ok", ok)
        runner = web.AppRunner(upstream, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base_url = f"http://127.0.0.1:{port}"
    figures["driver"] = rss_mb()
    if variant.startswith("iogate"):
        import_iogate(kind)
    figures["import"] = rss_mb()
    sockets_before = sockets()
    if trace:
        tracemalloc.start()
    with tempfile.TemporaryDirectory(prefix="iogate-mem-") as folder:
        if kind == "api":
            opened, close = await _api(variant, base_url)
        else:
            opened, close = await open_and_query(kind, variant, folder)
        if trace:
            current, peak = tracemalloc.get_traced_memory()
            figures["traced_kb"] = current / 1024
            figures["traced_peak_kb"] = peak / 1024
            tracemalloc.stop()
        figures["open"] = rss_mb()
        figures["threads"] = len(os.listdir("/proc/self/task"))
        figures["sockets"] = sockets() - sockets_before
        await close()
        del opened
    if runner is not None:
        await runner.cleanup()
    return figures


# -- parent side -----------------------------------------------------------------


def measure(kind: str, variant: str, trace: bool) -> dict[str, Any] | str:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, variant, *(["--trace"] if trace else [])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed: {last[:160]}"
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="RSS only, no tracemalloc pass")
    parser.add_argument("--only", help="comma-separated kinds: " + ", ".join(VARIANTS))
    parser.add_argument("--child", nargs=2, metavar=("KIND", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(*args.child, args.trace))))
        return
    kinds = args.only.split(",") if args.only else list(VARIANTS)
    for kind in kinds:
        if kind not in VARIANTS:
            parser.error(f"unknown kind {kind!r}; choose from {', '.join(VARIANTS)}")
    started = time.perf_counter()
    print(
        "| resource | variant | driver import MB | iogate import MB | open + "
        f"{QUERIES} ops MB | Python heap KB (peak) | sockets | threads |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        for variant in VARIANTS[kind]:
            rss = measure(kind, variant, trace=False)
            if isinstance(rss, str):
                print(f"| {kind} | {variant} | {rss} | | | | | |")
                continue
            traced = "-" if args.quick else measure(kind, variant, trace=True)
            heap = (
                f"{traced['traced_kb']:,.0f} ({traced['traced_peak_kb']:,.0f})"
                if isinstance(traced, dict)
                else traced
            )
            iogate_import = (
                f"{rss['import'] - rss['driver']:.1f}" if variant.startswith("iogate") else "-"
            )
            print(
                f"| {kind} | {variant} | {rss['driver'] - rss['start']:.1f} | {iogate_import} "
                f"| **{rss['open'] - rss['import']:.2f}** | {heap} | {rss['sockets']} "
                f"| {rss['threads']} |"
            )
    elapsed = time.perf_counter() - started
    print(
        "\nRSS in MiB from /proc/self/statm after gc + malloc_trim, one fresh process per "
        f"row; 'open' is the increase over the row's imports ({elapsed:.0f} s). API rows: "
        "the driver column includes the local aiohttp upstream the calls go to, and sockets count "
        "both ends of each keep-alive connection."
    )


if __name__ == "__main__":
    main()
