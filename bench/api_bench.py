"""GET throughput: AsyncAPIManager (retry, breaker, metrics on) against raw aiohttp.

Run: ``.venv/bin/python bench/api_bench.py [--requests N] [--rounds R] [--loop uvloop]``.

The upstream is a small aiohttp.web app in a *separate process* on
127.0.0.1, so the client's own cost is what differs between variants. Both
variants run in the same client process and the same run, at concurrency 1
and 50, in interleaved rounds (A B, B A, ...) so drift in machine load hits
both alike; the median round is reported. Both parse the JSON body. Loopback
only, bounded request counts.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp

from iogate.backends.http import AsyncAPIManager
from iogate.metrics.collector import MetricsCollector

CONCURRENCIES = (1, 50)
PAYLOAD = {"id": 123, "name": "John", "tags": ["a", "b", "c"], "active": True}

Call = Callable[[], Awaitable[object]]


def serve(port: int) -> None:
    """The upstream: one JSON route, run in its own process."""
    from aiohttp import web

    async def user(request: web.Request) -> web.Response:
        return web.json_response(PAYLOAD)

    app = web.Application()
    app.router.add_get("/v1/users/{id}", user)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def _throughput(call: Call, concurrency: int, total: int) -> tuple[float, float]:
    """(requests per second, client CPU microseconds per request)."""
    per_task = max(1, total // concurrency)

    async def worker() -> None:
        for _ in range(per_task):
            await call()

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = per_task * concurrency
    cpu_us = (time.process_time() - cpu_started) * 1e6 / done
    return done / (time.perf_counter() - started), cpu_us


# concurrency, raw req/s, manager req/s, raw CPU, manager CPU, per-round ratios
Row = tuple[int, float, float, float, float, list[float]]


class Variants:
    """The two clients compared: raw aiohttp, and the manager with retry,
    breaker and retry budget (``bench/api_instructions.py`` counts the same two)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/v1"
        self.raw = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=50, limit_per_host=50, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        self.manager = AsyncAPIManager(
            self.base,
            max_connections=50,
            timeout=60,
            name="bench",
            retry={"attempts": 3, "backoff_initial": 0.1, "backoff_max": 2.0},
            circuit_breaker={"failure_threshold": 5, "recovery_timeout": 5},
        )

    async def raw_get(self) -> object:
        async with self.raw.get(f"{self.base}/users/123") as response:
            response.raise_for_status()
            return await response.json()

    async def manager_get(self) -> object:
        result = await self.manager.get("/users/123")
        if not result.success:
            raise RuntimeError(result.error)
        return result.data

    async def close(self) -> None:
        await self.manager.close()
        await self.raw.close()


async def run(port: int, requests: int, rounds: int) -> list[Row]:
    collector = MetricsCollector()
    collector.install()
    variants = Variants(port)
    await variants.manager.initialize_session()
    raw_get, manager_get = variants.raw_get, variants.manager_get

    rows: list[Row] = []
    try:
        for call in (raw_get, manager_get):  # warm up connections and caches
            await _throughput(call, 50, 500)
        for concurrency in CONCURRENCIES:
            raw_rates: list[tuple[float, float]] = []
            manager_rates: list[tuple[float, float]] = []
            for round_number in range(rounds):
                order = [(raw_get, raw_rates), (manager_get, manager_rates)]
                if round_number % 2:
                    order.reverse()
                for call, rates in order:
                    rates.append(await _throughput(call, concurrency, requests))
            rows.append(
                (
                    concurrency,
                    statistics.median(r for r, _ in raw_rates),
                    statistics.median(r for r, _ in manager_rates),
                    statistics.median(c for _, c in raw_rates),
                    statistics.median(c for _, c in manager_rates),
                    # Each round's pair ran back to back: its ratio is the
                    # least disturbed by other load on the machine.
                    [m / r for (r, _), (m, _) in zip(raw_rates, manager_rates, strict=True)],
                )
            )
    finally:
        await variants.close()
        collector.uninstall()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        _wait_for_port(port)
        if args.loop == "uvloop":
            import uvloop

            rows = uvloop.run(run(port, args.requests, args.rounds))
        else:
            rows = asyncio.run(run(port, args.requests, args.rounds))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(
        f"loop={args.loop}, {args.requests} requests per round, median of {args.rounds} "
        "interleaved rounds; manager with retry, breaker, retry budget and metrics on\n"
    )
    print(
        "| concurrency | raw aiohttp req/s | AsyncAPIManager req/s | ratio "
        "| per-round ratio, median (min-max) | raw CPU µs/req | manager CPU µs/req |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency, raw_rate, manager_rate, raw_cpu, manager_cpu, ratios in rows:
        print(
            f"| {concurrency} | {raw_rate:.0f} | {manager_rate:.0f} | "
            f"{manager_rate / raw_rate:.1%} | {statistics.median(ratios):.1%} "
            f"({min(ratios):.0%}-{max(ratios):.0%}) | {raw_cpu:.0f} | {manager_cpu:.0f} |"
        )


if __name__ == "__main__":
    main()
