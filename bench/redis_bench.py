"""Single GET/SET throughput: AsyncRedisManager against raw redis.asyncio.

Run: ``.venv/bin/python bench/redis_bench.py [--url URL] [--ops N] [--rounds R] [--loop uvloop]``.

Every variant runs in the same process and the same run, at concurrency 1
and 50, in interleaved rounds (A B C, C B A, ...) so drift in machine load
hits all alike; the median round is reported, with the client's CPU time per
operation (``time.process_time``, which a busy machine disturbs far less
than wall-clock rates). The "deadline" variant gives every call its own
``Deadline``, as the gateway does. Loopback only, bounded operation counts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from iogate.backends.redis import AsyncRedisManager
from iogate.core.deadline import Deadline

DEFAULT_URL = "redis://127.0.0.1:6379/15"
CONCURRENCIES = (1, 50)
KEY = "iogate:bench:key"
VALUE = "x" * 64

Call = Callable[[], Awaitable[object]]


class Variant:
    def __init__(self, label: str, get: Call, put: Call) -> None:
        self.label = label
        self.calls = {"GET": get, "SET": put}


async def _throughput(call: Call, concurrency: int, total: int) -> tuple[float, float]:
    """(operations per second, client CPU microseconds per operation)."""
    per_task = max(1, total // concurrency)

    async def worker() -> None:
        for _ in range(per_task):
            await call()

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = per_task * concurrency
    cpu_us = (time.process_time() - cpu_started) * 1e6 / done
    return done / (time.perf_counter() - started), cpu_us


async def run(url: str = DEFAULT_URL, ops: int = 20_000, rounds: int = 5) -> list[str]:
    """Markdown table rows; each figure is the median of ``rounds`` interleaved rounds."""
    raw = aioredis.Redis.from_url(url, max_connections=64)
    auto = AsyncRedisManager(url, name="auto")
    pooled = AsyncRedisManager(url, 50, name="pooled", auto_pipeline=False)
    await auto.initialize_pool()
    await pooled.initialize_pool()
    get = {"operation": "get", "key": KEY}
    put = {"operation": "set", "key": KEY, "value": VALUE}
    variants = [
        Variant("redis.asyncio (raw)", lambda: raw.get(KEY), lambda: raw.set(KEY, VALUE)),
        Variant(
            "AsyncRedisManager auto_pipeline=True",
            lambda: auto.execute_query(KEY, get),
            lambda: auto.execute_query(KEY, put),
        ),
        Variant(
            "AsyncRedisManager auto_pipeline=True, deadline",
            lambda: auto.execute_query(KEY, get, deadline=Deadline(30)),
            lambda: auto.execute_query(KEY, put, deadline=Deadline(30)),
        ),
        Variant(
            "AsyncRedisManager auto_pipeline=False",
            lambda: pooled.execute_query(KEY, get),
            lambda: pooled.execute_query(KEY, put),
        ),
    ]
    rows = [
        "| client | concurrency | GET ops/s | SET ops/s | GET CPU µs/op | SET CPU µs/op |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    try:
        for variant in variants:
            await _throughput(variant.calls["GET"], 10, 2_000)  # warm up connections
        for concurrency in CONCURRENCIES:
            total = ops if concurrency > 1 else ops // 4
            figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for round_number in range(rounds):
                order = variants if round_number % 2 == 0 else variants[::-1]
                for variant in order:
                    for verb, call in variant.calls.items():
                        figures.setdefault((variant.label, verb), []).append(
                            await _throughput(call, concurrency, total)
                        )
            for variant in variants:
                rate = {
                    v: statistics.median(r for r, _ in figures[variant.label, v])
                    for v in ("GET", "SET")
                }
                cpu = {
                    v: statistics.median(c for _, c in figures[variant.label, v])
                    for v in ("GET", "SET")
                }
                rows.append(
                    f"| {variant.label} | {concurrency} | {rate['GET']:,.0f} | {rate['SET']:,.0f} "
                    f"| {cpu['GET']:.1f} | {cpu['SET']:.1f} |"
                )
    finally:
        await raw.aclose()
        await auto.close()
        await pooled.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        rows = uvloop.run(run(args.url, args.ops, args.rounds))
    else:
        rows = asyncio.run(run(args.url, args.ops, args.rounds))
    print(
        f"loop={args.loop}, {args.ops} operations per round at concurrency 50 "
        f"({args.ops // 4} at 1), median of {args.rounds} interleaved rounds\n"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
