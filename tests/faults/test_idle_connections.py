"""Idle pooled connections the server ended are not handed out.

Five connections are warmed, then the server ends every one of them while
they sit idle in the pool (``pg_terminate_backend``, MariaDB's ``KILL``: what
a failover or a proxy's idle timeout does). With the idle check on, none of
the next 20 requests fails: each dead connection is found by its check and
replaced. With the check off (``idle_check_interval=0``, iogate before the
check existed) the same run fails requests, which is what the check is for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from iogate import AsyncPostgreSQLManager, DatabaseOptions
from iogate.backends.mysql import AsyncMySQLManager
from iogate.backends.pooled import PooledDatabaseManager

POOL = 5
REQUESTS = 20
INTERVAL = 0.2  # idle_check_interval for the test (the default is 2 s)


def options(interval: float) -> DatabaseOptions:
    return DatabaseOptions(
        min_connections=POOL,
        max_connections=POOL,
        acquire_timeout=5,
        statement_timeout=5,
        idle_check_interval=interval,
    )


async def poll(value: Callable[[], Awaitable[Any]], wanted: Any, within: float = 10.0) -> None:
    end = time.monotonic() + within
    while (got := await value()) != wanted:
        assert time.monotonic() < end, f"still {got!r}, wanted {wanted!r}"
        await asyncio.sleep(0.05)


async def session_ids(manager: PooledDatabaseManager[Any], query: str) -> list[int]:
    """The server's id of each pooled connection (all of them at once)."""
    results = await asyncio.gather(*(manager.execute_query(query) for _ in range(POOL)))
    ids = sorted({int(r.data[0]["id"]) for r in results if r.success})
    assert len(ids) == POOL, results
    return ids


async def failures_after_kill(
    manager: PooledDatabaseManager[Any], kill: Callable[[], Awaitable[None]]
) -> int:
    killed_at = time.monotonic()
    await kill()
    # Let the connections be idle past the interval (as after any quiet spell).
    await asyncio.sleep(max(0.0, INTERVAL + 0.05 - (time.monotonic() - killed_at)))
    results = await asyncio.gather(
        *(manager.execute_query("SELECT 1 AS one") for _ in range(REQUESTS))
    )
    return sum(1 for r in results if not r.success)


@pytest.mark.postgres
@pytest.mark.parametrize("check", [True, False], ids=["check-on", "check-off"])
async def test_postgres_terminated_idle_connections(
    postgres_url: str, pg_raw: asyncpg.Connection, check: bool
) -> None:
    manager = AsyncPostgreSQLManager(postgres_url, options=options(INTERVAL if check else 0))
    await manager.initialize_pool()
    try:
        pids = await session_ids(manager, "SELECT pg_backend_pid() AS id, pg_sleep(0.2)")

        async def kill() -> None:
            await pg_raw.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids
            )
            await poll(
                lambda: pg_raw.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
                ),
                0,
            )

        failures = await failures_after_kill(manager, kill)
        if check:
            assert failures == 0
            assert manager._pool.checks_failed == POOL
        else:
            assert failures > 0  # the fault is real: the check is what saves them
    finally:
        await manager.close()


@pytest.mark.mysql
@pytest.mark.parametrize("check", [True, False], ids=["check-on", "check-off"])
async def test_mariadb_killed_idle_connections(mysql_url: str, check: bool) -> None:
    manager = AsyncMySQLManager(mysql_url, options=options(INTERVAL if check else 0))
    side = AsyncMySQLManager(mysql_url, options=DatabaseOptions(min_connections=0))
    await manager.initialize_pool()
    try:
        ids = await session_ids(manager, "SELECT CONNECTION_ID() AS id, SLEEP(0.2) AS s")

        async def alive() -> int:
            listed = ", ".join(str(i) for i in ids)
            result = await side.execute_query(
                f"SELECT COUNT(*) AS n FROM information_schema.processlist WHERE id IN ({listed})"
            )
            assert result.success, result
            return int(result.data[0]["n"])

        async def kill() -> None:
            for thread in ids:
                result = await side.execute_query(f"KILL CONNECTION {thread}")
                assert result.success, result
            await poll(alive, 0)

        failures = await failures_after_kill(manager, kill)
        if check:
            assert failures == 0
            assert manager._pool.checks_failed == POOL
        else:
            assert failures > 0
    finally:
        await manager.close()
        await side.close()
