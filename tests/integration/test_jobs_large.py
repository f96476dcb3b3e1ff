"""A 100,000-operation job mixing PostgreSQL, Redis, SQLite and API calls,
its chunks on NATS JetStream (and, for comparison, the embedded queue), the
job store on SQLite: every operation done exactly once."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from iogate import AsyncOperationOrchestrator
from iogate.jobs.service import JobService
from tests.brokers import NATS_URL, drop_queue
from tests.conftest import port_open, unavailable

TOTAL = 100_000


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, set[str]]]:
    seen: set[str] = set()

    async def hook(request: web.Request) -> web.Response:
        seen.add(request.headers["Idempotency-Key"])
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


def operation(i: int, table: str, prefix: str) -> dict[str, Any]:
    kind = i % 4
    if kind == 0:
        return {
            "type": "database",
            "db_name": "pg",
            "query": f"INSERT INTO {table} (v) VALUES ($1)",
            "params": [i],
        }
    if kind == 1:
        return {
            "type": "database",
            "db_name": "redis",
            "query": f"{prefix}{i}",
            "params": {"operation": "set", "value": i, "ttl": 600},
        }
    if kind == 2:
        return {
            "type": "database",
            "db_name": "lite",
            "query": "INSERT INTO items (v) VALUES (?)",
            "params": [i],
        }
    return {"type": "api", "api_name": "hooks", "method": "POST", "endpoint": "/hook"}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("broker", ["nats", "embedded"])
async def test_a_100k_mixed_job_runs_every_operation_once(
    broker: str,
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
    upstream: tuple[str, set[str]],
    table_name: str,
) -> None:
    if broker == "nats" and not port_open(NATS_URL, 4222):
        unavailable(f"no NATS at {NATS_URL}")
    prefix = f"iogate-test-job-{uuid.uuid4().hex[:8]}:"
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"CREATE TABLE {table_name} (id serial PRIMARY KEY, v int UNIQUE)")
    try:
        async with AsyncOperationOrchestrator() as orchestrator:
            await orchestrator.add_database_manager("pg", "postgresql", postgres_url)
            await orchestrator.add_database_manager("redis", "redis", redis_url)
            await orchestrator.add_database_manager("lite", "sqlite", str(tmp_path / "t.db"))
            await orchestrator.add_api_manager("hooks", upstream[0])
            await orchestrator.execute_database_operation(
                "lite", "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER UNIQUE)"
            )
            queue = f"iogate-test-{uuid.uuid4().hex[:12]}"
            service = await JobService.start(
                orchestrator,
                store=f"sqlite:///{tmp_path / 'jobs.db'}",
                broker=NATS_URL if broker == "nats" else "",
                queue=queue,
                run_chunks=True,  # this process is the worker
                runner_chunks=4,
            )
            try:
                started = time.perf_counter()
                job = await orchestrator.submit_batch_job(
                    [operation(i, table_name, prefix) for i in range(TOTAL)], concurrency=50
                )
                progress = await job.wait(timeout=500)
                elapsed = time.perf_counter() - started
                assert progress.status == "done"
                assert (progress.done, progress.failed) == (TOTAL, 0)
                indexes = [stored.index async for stored in job.results(page=5000)]
                assert indexes == list(range(TOTAL))
            finally:
                await service.aclose()
                if broker == "nats":
                    await drop_queue("nats", queue)
            lite = await orchestrator.execute_database_operation(
                "lite", "SELECT count(*) AS n FROM items"
            )
            assert lite.data == [{"n": TOTAL // 4}]
            redis = await orchestrator.execute_database_operation(
                "redis", f"{prefix}{TOTAL - 3}", {"operation": "get"}
            )
            assert redis.data == str(TOTAL - 3)
        assert await conn.fetchval(f"SELECT count(*) FROM {table_name}") == TOTAL // 4
        assert len(upstream[1]) == TOTAL // 4  # one call per API operation, each its own key
        print(f"{broker}: 100,000 mixed operations in {elapsed:.1f}s ({TOTAL / elapsed:,.0f}/s)")
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table_name}")
        await conn.close()
