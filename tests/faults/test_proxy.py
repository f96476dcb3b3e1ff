"""The fault proxy itself does what the suite relies on, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from tests.faults.proxy import FaultProxy
from tests.faults.servers import ThrowawayPostgres


async def test_open_relays_and_blackhole_swallows(pg_fault: FaultProxy, postgres_url: str) -> None:
    conn = await asyncpg.connect(pg_fault.url(postgres_url))
    try:
        assert await conn.fetchval("SELECT 41 + 1") == 42
        await pg_fault.blackhole()
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT 1", timeout=0.5)
        assert time.monotonic() - started < 1.5
    finally:
        conn.terminate()


async def test_refuse_and_restore(pg_fault: FaultProxy, postgres_url: str) -> None:
    await pg_fault.refuse()
    with pytest.raises(OSError):
        await asyncpg.connect(pg_fault.url(postgres_url), timeout=2)
    await pg_fault.restore()
    conn = await asyncpg.connect(pg_fault.url(postgres_url), timeout=2)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()


async def test_close_after_cuts_a_reply(pg_fault: FaultProxy, postgres_url: str) -> None:
    conn = await asyncpg.connect(pg_fault.url(postgres_url))
    await pg_fault.close_after(100)
    with pytest.raises((asyncpg.PostgresConnectionError, ConnectionError, OSError)):
        await conn.fetch("SELECT repeat('x', 10000) FROM generate_series(1, 10)", timeout=5)
    conn.terminate()


def test_throwaway_postgres_restarts(throwaway_postgres: ThrowawayPostgres) -> None:
    async def one() -> int:
        conn = await asyncpg.connect(throwaway_postgres.url, timeout=5)
        try:
            return int(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()

    assert asyncio.run(one()) == 1
    throwaway_postgres.restart("immediate")
    assert asyncio.run(one()) == 1
