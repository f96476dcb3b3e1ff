"""A soak with faults: a real ``iogate serve`` stays flat and never answers 500.

PostgreSQL and Redis are reached through fault proxies, SQLite is a local
file. A bounded mixed load (single statements, key-value commands, mixed
batches, ``/ready``) runs for ``SOAK_SECONDS`` (60 in ``make test``; ``make
soak`` runs 600) while a fault schedule repeats every ``CYCLE`` seconds:
PostgreSQL blackholed for 1 s, connections reset, Redis blackholed for 1 s,
replies cut short (``close_after``). Every second the gateway's RSS, open
file descriptors and threads, and its connections to the servers (the
proxies' live relays) are sampled (the gateway exposes no asyncio task
count, so threads stand in for it). Promised: for each, the mean of the
last third is at most the first third's + 5 % (threads: or + 1, see the
end); no 500 at all; no request hangs; every reply that succeeds is the
request's own.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.faults.gateway_process import GatewayProcess, running_gateway
from tests.faults.proxy import FaultProxy, fault_proxy

CYCLE = 10.0  # seconds; the fault schedule repeats, so each third sees the same faults
SOAK_SECONDS = max(3 * CYCLE, round(float(os.environ.get("SOAK_SECONDS", "60")) / 30) * 30)
WARM_UP = CYCLE  # one cycle before sampling: pools and caches reach their steady size
WORKERS = 6
PG_POOL = 4
REQUEST_TIMEOUT = 3.0
SLACK = 0.5
GROWTH = 1.05  # last third's mean <= first third's mean + 5 %
METRICS = ("rss_kib", "fds", "threads", "sessions")


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    slowest: float = 0.0


@dataclass
class Soak:
    gateway: GatewayProcess
    pg: FaultProxy
    redis: FaultProxy
    table: str
    tally: Tally = field(default_factory=Tally)
    samples: list[dict[str, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    # -- the load ----------------------------------------------------------------------

    async def worker(self, client: httpx.AsyncClient, number: int) -> None:
        rng = random.Random(number)
        marker = number * 10_000_000
        while not self.stop.is_set():
            marker += 1
            kind = rng.choices(
                ["pg_read", "pg_write", "kv", "sqlite", "batch", "ready"],
                weights=[30, 10, 30, 15, 10, 1],
            )[0]
            path, body, expected = self.request(kind, marker, number)
            started = time.monotonic()
            try:
                if kind == "ready":
                    response = await client.get(path, timeout=REQUEST_TIMEOUT * 4)
                else:
                    response = await client.post(path, json=body, timeout=REQUEST_TIMEOUT * 4)
            except httpx.HTTPError as exc:
                self.tally.server_errors.append(f"{kind}: no answer: {exc!r}")
                continue
            took = time.monotonic() - started
            self.tally.slowest = max(self.tally.slowest, took)
            self.tally.statuses[response.status_code] += 1
            if response.status_code >= 500 and response.status_code not in (502, 503, 504):
                self.tally.server_errors.append(f"{kind}: {response.status_code} {response.text}")
            if kind != "ready" and took > REQUEST_TIMEOUT + SLACK:
                self.tally.server_errors.append(f"{kind}: took {took:.2f}s")
            if response.status_code == 200 and expected is not None:
                got = response.json()
                data = [r["data"] for r in got["results"]] if kind == "batch" else got["data"]
                if kind == "batch":
                    # A step may fail under a fault; those that succeed must be their own.
                    ok = [r["success"] for r in got["results"]]
                    data = [d if s else e for d, e, s in zip(data, expected, ok, strict=True)]
                if data != expected:
                    self.tally.mismatches.append(f"{kind}: {data!r} != {expected!r}")
            await asyncio.sleep(0.01)

    def request(self, kind: str, marker: int, number: int) -> tuple[str, Any, Any]:
        pg_read = {"db_name": "pg", "query": "SELECT $1::bigint AS m", "params": [marker]}
        kv = {
            "db_name": "cache",
            "query": "k",
            "params": {
                "operation": "pipeline",
                "operations": [
                    {"operation": "set", "key": f"soak:{number}", "value": str(marker)},
                    {"operation": "get", "key": f"soak:{number}"},
                ],
            },
        }
        lite = {"db_name": "lite", "query": "SELECT $1 AS m", "params": [marker]}
        if kind == "pg_read":
            return "/database/execute", pg_read, [{"m": marker}]
        if kind == "pg_write":
            insert = f"INSERT INTO {self.table} (m) VALUES ($1)"
            return "/database/execute", {"db_name": "pg", "query": insert, "params": [marker]}, None
        if kind == "kv":
            return "/database/execute", kv, [True, str(marker)]
        if kind == "sqlite":
            return "/database/execute", lite, [{"m": marker}]
        if kind == "batch":
            operations = [
                {"type": "database", **pg_read},
                {
                    "type": "database",
                    "db_name": "cache",
                    "query": "k",
                    "params": {"operation": "get", "key": "soak:fixed"},
                },
                {"type": "database", **lite},
            ]
            return (
                "/batch/execute",
                {"operations": operations},
                [
                    [{"m": marker}],
                    "fixed",
                    [{"m": marker}],
                ],
            )
        return "/ready", None, None

    # -- faults and samples ---------------------------------------------------------------

    async def faults(self) -> None:
        """One cycle after another until stopped; each cycle is the same schedule."""
        while not self.stop.is_set():
            cycle = time.monotonic()
            for at, action in (
                (1.0, self.pg.blackhole),
                (2.0, self.pg.restore),
                (4.0, self.pg.reset),
                (4.2, self.pg.restore),
                (5.0, self.redis.blackhole),
                (6.0, self.redis.restore),
                (7.0, lambda: self.redis.close_after(40)),
                (7.5, self.redis.restore),
                (8.0, lambda: self.pg.close_after(300)),
                (8.5, self.pg.restore),
            ):
                await asyncio.sleep(max(0.0, cycle + at - time.monotonic()))
                await action()
            await asyncio.sleep(max(0.0, cycle + CYCLE - time.monotonic()))

    async def sample_every_second(self, seconds: float) -> None:
        started = time.monotonic()
        tick = 0
        while time.monotonic() - started < seconds:
            tick += 1
            self.samples.append(
                {
                    "rss_kib": self.gateway.rss_kib(),
                    "fds": self.gateway.open_fds(),
                    "threads": self.gateway.threads(),
                    "sessions": self.pg.live + self.redis.live,
                }
            )
            await asyncio.sleep(max(0.0, started + tick - time.monotonic()))


@pytest.fixture
async def soak_table(postgres_url: str) -> AsyncIterator[str]:
    table = f"soak_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"CREATE TABLE {table} (m bigint)")
    try:
        yield table
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


@pytest.mark.timeout(SOAK_SECONDS + WARM_UP + 120)
async def test_soak_with_faults_stays_flat(
    postgres_url: str, redis_url: str, soak_table: str, tmp_path: Path
) -> None:
    async with (
        fault_proxy(postgres_url, 5432) as pg,
        fault_proxy(redis_url, 6379) as redis,
    ):
        config = f"""request_timeout = {REQUEST_TIMEOUT}

[databases.pg]
type = "postgresql"
url = "{pg.url(postgres_url)}"
max_connections = {PG_POOL}
acquire_timeout = 2
statement_timeout = 2

[databases.cache]
type = "redis"
url = "{redis.url(redis_url)}"

[databases.lite]
type = "sqlite"
path = "{tmp_path / "soak.db"}"
"""
        async with (
            running_gateway(tmp_path, config) as gateway,
            httpx.AsyncClient(base_url=gateway.base) as client,
        ):
            setup = {
                "db_name": "cache",
                "query": "k",
                "params": {"operation": "set", "key": "soak:fixed", "value": "fixed"},
            }
            assert (await client.post("/database/execute", json=setup)).status_code == 200
            soak = Soak(gateway, pg, redis, soak_table)
            workers = [asyncio.create_task(soak.worker(client, n)) for n in range(WORKERS)]
            faults = asyncio.create_task(soak.faults())
            try:
                await asyncio.sleep(WARM_UP)
                await soak.sample_every_second(SOAK_SECONDS)
            finally:
                soak.stop.set()
                faults.cancel()
                await asyncio.gather(*workers, faults, return_exceptions=True)
                await pg.restore()
                await redis.restore()
            log = gateway.log_text()

    third = len(soak.samples) // 3
    first, last = soak.samples[:third], soak.samples[-third:]
    means = {
        m: (statistics.mean(s[m] for s in first), statistics.mean(s[m] for s in last))
        for m in METRICS
    }
    total = sum(soak.tally.statuses.values())
    print(
        f"soak {SOAK_SECONDS:g}s: {total} requests {dict(soak.tally.statuses)}, "
        f"slowest {soak.tally.slowest:.2f}s; first third -> last third: "
        + ", ".join(f"{m} {a:.1f} -> {b:.1f}" for m, (a, b) in means.items())
    )
    assert soak.tally.statuses[500] == 0, soak.tally.server_errors[:5]
    assert soak.tally.server_errors == [], soak.tally.server_errors[:5]
    assert soak.tally.mismatches == [], soak.tally.mismatches[:5]
    assert "Traceback" not in log
    assert soak.tally.statuses[200] > total * 0.5  # the faults are brief: mostly served
    for metric, (before, after) in means.items():
        limit = before * GROWTH
        if metric == "threads":
            # Starlette runs sync dependencies on anyio's worker threads, which
            # come with concurrency and go after 10 s idle: +-1 of ~9 is that
            # bounded pool breathing, not a leak (a leak shows in `make soak`).
            limit = max(limit, before + 1)
        assert after <= limit, f"{metric} grew: {before:.1f} -> {after:.1f}"
