"""Single GET/SET throughput: AsyncRedisManager against raw redis.asyncio.

Run: ``.venv/bin/python bench/redis_bench.py [--url URL] [--ops N] [--loop uvloop]``.
Every variant runs in the same process and the same run, at concurrency 1
and 50, so the figures compare like with like. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from iogate.backends.redis import AsyncRedisManager

DEFAULT_URL = "redis://127.0.0.1:6379/15"
CONCURRENCIES = (1, 50)
KEY = "iogate:bench:key"
VALUE = "x" * 64

Call = Callable[[], Awaitable[object]]


async def _throughput(call: Call, concurrency: int, total: int) -> float:
    per_task = max(1, total // concurrency)

    async def worker() -> None:
        for _ in range(per_task):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per_task * concurrency / (time.perf_counter() - started)


async def _variants(url: str) -> list[tuple[str, Call, Call, Callable[[], Awaitable[None]]]]:
    raw = aioredis.Redis.from_url(url, max_connections=64)
    auto = AsyncRedisManager(url, name="auto")
    pooled = AsyncRedisManager(url, 50, name="pooled", auto_pipeline=False)
    await auto.initialize_pool()
    await pooled.initialize_pool()
    get = {"operation": "get", "key": KEY}
    put = {"operation": "set", "key": KEY, "value": VALUE}

    async def close_raw() -> None:
        await raw.aclose()

    return [
        ("redis.asyncio (raw)", lambda: raw.get(KEY), lambda: raw.set(KEY, VALUE), close_raw),
        (
            "AsyncRedisManager auto_pipeline=True",
            lambda: auto.execute_query(KEY, get),
            lambda: auto.execute_query(KEY, put),
            auto.close,
        ),
        (
            "AsyncRedisManager auto_pipeline=False",
            lambda: pooled.execute_query(KEY, get),
            lambda: pooled.execute_query(KEY, put),
            pooled.close,
        ),
    ]


async def run(url: str = DEFAULT_URL, ops: int = 20_000, rounds: int = 3) -> list[str]:
    """Markdown table rows; each figure is the best of ``rounds`` runs."""
    variants = await _variants(url)
    rows = [
        "| client | concurrency | GET ops/s | SET ops/s |",
        "|---|---:|---:|---:|",
    ]
    try:
        for label, get, put, _ in variants:
            await _throughput(get, 10, 2_000)  # warm up connections
            for concurrency in CONCURRENCIES:
                total = ops if concurrency > 1 else ops // 4
                best_get = max([await _throughput(get, concurrency, total) for _ in range(rounds)])
                best_set = max([await _throughput(put, concurrency, total) for _ in range(rounds)])
                rows.append(f"| {label} | {concurrency} | {best_get:,.0f} | {best_set:,.0f} |")
    finally:
        for *_, close in variants:
            await close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    rows = asyncio.run(run(args.url, args.ops, args.rounds))
    print(f"event loop: {args.loop}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
