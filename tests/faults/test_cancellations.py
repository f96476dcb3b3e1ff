"""1,000 random cancellations per backend, through the library.

Each operation asks for its own distinct marker value; concurrent tasks are
cancelled at a random moment (waiting for a connection, mid-statement,
mid-transaction, while a connection goes back) and a quarter of them are
left to finish. Promised afterwards:

- zero mismatched replies: every operation that returned got its own marker;
- zero failures of the operations that were not cancelled;
- zero leftover sessions: nothing checked out of the pool, and the server's
  sessions for the manager are back to the pool's size, all idle (no
  statement still running, no transaction left open).

PostgreSQL and Redis are this session's throwaway servers (their session
lists are ours alone); MariaDB's sessions are told apart by a user created
for the test; SQLite's by the pool and by the database's write lock.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from iogate import AsyncPostgreSQLManager, AsyncSQLiteManager, DatabaseOptions
from iogate.backends.base import AsyncDatabaseManager
from iogate.backends.redis import AsyncRedisManager
from iogate.core.deadline import Deadline
from tests.conftest import poll
from tests.faults.servers import ThrowawayPostgres, ThrowawayRedis

CANCELLATIONS = 1_000
CONCURRENCY = 16  # tasks at a time: more than the pool, so some wait for a connection
LEFT_ALONE = 4  # of them per wave, not cancelled: they must get their own reply
POOL = 4
MAX_CANCEL_DELAY = 0.008  # seconds; SQL operations take about 0-5 ms
SETTLE = 10.0  # seconds for discarded connections to be closed on the server

Op = Callable[[int], Awaitable[bool]]


@dataclass
class Storm:
    cancelled_at_random: int = 0  # tasks that ended cancelled (the cancel landed mid-operation)
    finished_before_cancel: int = 0
    matched: int = 0
    mismatched: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def report(self, label: str) -> None:
        print(
            f"{label}: {self.cancelled_at_random} cancelled mid-operation, "
            f"{self.finished_before_cancel} finished first, {self.matched} own replies, "
            f"{len(self.mismatched)} mismatched, {len(self.failures)} failures"
        )


class Mismatch(Exception):
    pass


async def storm(op: Op, *, seed: int, max_delay: float = MAX_CANCEL_DELAY) -> Storm:
    """``CANCELLATIONS`` tasks cancelled at random points, plus tasks left alone."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    outcome = Storm()
    marker = 0
    per_wave = CONCURRENCY - LEFT_ALONE
    for _ in range(CANCELLATIONS // per_wave + 1):
        doomed = min(per_wave, CANCELLATIONS - outcome_cancels(outcome))
        if doomed <= 0:
            break
        tasks: list[tuple[asyncio.Task[bool], bool]] = []
        for position in range(doomed + LEFT_ALONE):
            marker += 1
            task = asyncio.ensure_future(op(marker))
            cancel = position < doomed
            if cancel:
                loop.call_later(rng.uniform(0, max_delay), task.cancel)
            tasks.append((task, cancel))
        await asyncio.wait([t for t, _ in tasks])
        for task, cancel in tasks:
            if task.cancelled():
                assert cancel, "a task nobody cancelled was cancelled"
                outcome.cancelled_at_random += 1
                continue
            if cancel:
                outcome.finished_before_cancel += 1
            failure = task.exception()
            if isinstance(failure, Mismatch):
                outcome.mismatched.append(int(str(failure)))
            elif failure is not None:
                outcome.failures.append(repr(failure))
            else:
                outcome.matched += 1
    return outcome


def outcome_cancels(outcome: Storm) -> int:
    return outcome.cancelled_at_random + outcome.finished_before_cancel


def check(result: Any, expected: Any, marker: int) -> bool:
    if not result.success:
        raise AssertionError(f"{result.error_type}: {result.error}")
    if result.data != expected:
        raise Mismatch(str(marker))
    return True


def assert_storm(outcome: Storm, label: str) -> None:
    outcome.report(label)
    assert outcome.mismatched == []
    assert outcome.failures == []
    assert outcome_cancels(outcome) == CANCELLATIONS
    # The cancels must really land mid-operation, not after it.
    assert outcome.cancelled_at_random > CANCELLATIONS // 3, outcome


async def settled(manager: AsyncDatabaseManager) -> bool:
    stats = manager.pool_stats()
    return stats.get("in_use", 0) == 0 and stats.get("waiting", 0) == 0


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
async def pg_checker(throwaway_postgres: ThrowawayPostgres) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(throwaway_postgres.url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def test_postgres(
    throwaway_postgres: ThrowawayPostgres, pg_checker: asyncpg.Connection
) -> None:
    manager = AsyncPostgreSQLManager(
        throwaway_postgres.url,
        options=DatabaseOptions(max_connections=POOL, acquire_timeout=5, statement_timeout=5),
    )
    query = "SELECT $1::bigint AS marker FROM pg_sleep($2::float8)"

    async def op(marker: int) -> bool:
        pause = (marker % 5) / 1000
        if marker % 3 == 0:  # inside a transaction: BEGIN, two statements, COMMIT
            async with manager.transaction(deadline=Deadline(5)) as tx:
                check(await tx.execute_query(query, [marker, pause]), [{"marker": marker}], marker)
                second = await tx.execute_query("SELECT $1::bigint AS marker", [-marker])
                return check(second, [{"marker": -marker}], marker)
        result = await manager.execute_query(query, [marker, pause], deadline=Deadline(5))
        return check(result, [{"marker": marker}], marker)

    async def sessions() -> list[asyncpg.Record]:
        return list(
            await pg_checker.fetch(
                "SELECT state, xact_start IS NOT NULL AS in_tx FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        )

    async def back_to_pool_size() -> bool:
        rows = await sessions()
        size = manager.pool_stats()["size"]
        return len(rows) == size and all(r["state"] == "idle" and not r["in_tx"] for r in rows)

    try:
        await manager.initialize_pool()
        outcome = await storm(op, seed=1)
        assert_storm(outcome, "postgresql")
        assert await poll(lambda: settled(manager), timeout=SETTLE), manager.pool_stats()
        assert await poll(back_to_pool_size, timeout=SETTLE), (
            await sessions(),
            manager.pool_stats(),
        )
        await assert_healthy(op)
    finally:
        await manager.close()
    assert await poll(lambda: _none_left(sessions), timeout=SETTLE), await sessions()


async def _none_left(sessions: Callable[[], Awaitable[list[Any]]]) -> bool:
    return not await sessions()


async def assert_healthy(op: Op) -> None:
    """After the storm, concurrent operations all get their own replies."""
    results = await asyncio.gather(*(op(10_000_000 + i) for i in range(64)))
    assert all(results)


# -- MariaDB -----------------------------------------------------------------------------


@pytest.fixture
async def mysql_user(mysql_url: str) -> AsyncIterator[tuple[str, Any]]:
    """A user of this test's own, so its sessions are told apart in the processlist."""
    import asyncmy

    parts = urlsplit(mysql_url)
    admin = await asyncmy.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
    )
    user = f"iogate_cancel_{uuid.uuid4().hex[:8]}"
    database = parts.path.strip("/") or "test"
    async with admin.cursor() as cursor:
        await cursor.execute(f"CREATE USER '{user}'@'%'")
        await cursor.execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%'")
    url = urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port or 3306}"))
    try:
        yield url, (admin, user)
    finally:
        async with admin.cursor() as cursor:
            await cursor.execute(f"DROP USER '{user}'@'%'")
        admin.close()


async def test_mariadb(mysql_user: tuple[str, Any]) -> None:
    from iogate.backends.mysql import AsyncMySQLManager

    url, (admin, user) = mysql_user
    manager = AsyncMySQLManager(
        url, options=DatabaseOptions(max_connections=POOL, acquire_timeout=5, statement_timeout=5)
    )
    query = "SELECT CAST($1 AS SIGNED) AS marker, SLEEP($2) AS slept"

    async def op(marker: int) -> bool:
        pause = (marker % 5) / 1000
        if marker % 3 == 0:
            async with manager.transaction(deadline=Deadline(5)) as tx:
                result = await tx.execute_query(query, [marker, pause])
                check(result, [{"marker": marker, "slept": 0}], marker)
                second = await tx.execute_query("SELECT CAST($1 AS SIGNED) AS marker", [-marker])
                return check(second, [{"marker": -marker}], marker)
        result = await manager.execute_query(query, [marker, pause], deadline=Deadline(5))
        return check(result, [{"marker": marker, "slept": 0}], marker)

    async def sessions() -> list[tuple[Any, ...]]:
        async with admin.cursor() as cursor:
            await cursor.execute(
                "SELECT command, state, trx.trx_id IS NOT NULL "
                "FROM information_schema.processlist p "
                "LEFT JOIN information_schema.innodb_trx trx ON trx.trx_mysql_thread_id = p.id "
                "WHERE p.user = %s",
                (user,),
            )
            return list(await cursor.fetchall())

    async def back_to_pool_size() -> bool:
        rows = await sessions()
        size = manager.pool_stats()["size"]
        return len(rows) == size and all(r[0] == "Sleep" and not r[2] for r in rows)

    try:
        await manager.initialize_pool()
        outcome = await storm(op, seed=2)
        assert_storm(outcome, "mariadb")
        assert await poll(lambda: settled(manager), timeout=SETTLE), manager.pool_stats()
        assert await poll(back_to_pool_size, timeout=SETTLE), (
            await sessions(),
            manager.pool_stats(),
        )
        await assert_healthy(op)
    finally:
        await manager.close()
    assert await poll(lambda: _none_left(sessions), timeout=SETTLE), await sessions()


# -- Redis --------------------------------------------------------------------------------


@pytest.mark.parametrize("auto_pipeline", [True, False], ids=["pipelined", "pooled"])
async def test_redis(throwaway_redis: ThrowawayRedis, auto_pipeline: bool) -> None:
    checker = aioredis.Redis.from_url(throwaway_redis.url, decode_responses=True)
    total = CANCELLATIONS * 2 + 20_000_100
    values = {f"marker:{i}": f"v{i}" for i in range(1, CANCELLATIONS * 2)}
    await checker.mset(values)
    manager = AsyncRedisManager(
        throwaway_redis.url, max_connections=POOL, auto_pipeline=auto_pipeline
    )

    def expect(marker: int) -> str | None:
        return values.get(f"marker:{marker}")

    async def op(marker: int) -> bool:
        if marker % 3 == 0:  # a pipeline: two replies that must stay in order
            other = (marker + 7) % total
            params = {
                "operation": "pipeline",
                "operations": [
                    {"operation": "get", "key": f"marker:{marker}"},
                    {"operation": "get", "key": f"marker:{other}"},
                ],
            }
            result = await manager.execute_query("p", params, deadline=Deadline(5))
            return check(result, [expect(marker), expect(other)], marker)
        params = {"operation": "get", "key": f"marker:{marker}"}
        result = await manager.execute_query("k", params, deadline=Deadline(5))
        return check(result, expect(marker), marker)

    own_id = await checker.client_id()

    async def sessions() -> list[dict[str, Any]]:
        return [c for c in await checker.client_list() if int(c["id"]) != own_id]

    async def back_to_pool_size() -> bool:
        clients = await sessions()
        # Pipelined: the one multiplexed connection; pooled: at most the pool.
        wanted = len(clients) == 1 if auto_pipeline else 1 <= len(clients) <= POOL
        return wanted and all(c["cmd"] not in ("", "NULL") for c in clients)

    try:
        await manager.initialize_pool()
        # A reply takes well under a millisecond: cancel within one.
        outcome = await storm(op, seed=3, max_delay=0.0006)
        assert_storm(outcome, f"redis ({'pipelined' if auto_pipeline else 'pooled'})")
        if auto_pipeline:
            assert await poll(lambda: manager.pool_details()["in_flight"] == 0, timeout=SETTLE)
        assert await poll(back_to_pool_size, timeout=SETTLE), await sessions()
        await assert_healthy(op)
    finally:
        await manager.close()
        assert await poll(lambda: _none_left(sessions), timeout=SETTLE), await sessions()
        await checker.aclose()


# -- SQLite ---------------------------------------------------------------------------------


async def test_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "cancel.db"
    manager = AsyncSQLiteManager(str(path), max_connections=POOL)
    burn = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $2) "
        "SELECT $1 AS marker, count(*) AS n FROM c"
    )
    written: set[int] = set()  # markers whose transaction returned (committed)

    async def op(marker: int) -> bool:
        steps = (marker % 5) * 4000
        if marker % 3 == 0:  # a write transaction: all or nothing
            async with manager.transaction(deadline=Deadline(5)) as tx:
                inserted = await tx.execute_query("INSERT INTO t (marker) VALUES ($1)", [marker])
                assert inserted.success, inserted.error
                result = await tx.execute_query("SELECT marker FROM t WHERE marker = $1", [marker])
                check(result, [{"marker": marker}], marker)
            assert tx.status == "committed", tx.status
            written.add(marker)
            return True
        result = await manager.execute_query(burn, [marker, steps], deadline=Deadline(5))
        return check(result, [{"marker": marker, "n": max(steps, 1)}], marker)

    try:
        created = await manager.execute_query("CREATE TABLE t (marker INTEGER PRIMARY KEY)")
        assert created.success, created.error
        started = time.monotonic()
        outcome = await storm(op, seed=4)
        print(f"sqlite storm in {time.monotonic() - started:.1f}s")
        assert_storm(outcome, "sqlite")
        assert await poll(lambda: settled(manager), timeout=SETTLE), manager.pool_stats()
        stats = manager.pool_stats()
        assert stats["size"] <= stats["max_size"], stats
        # No transaction was left open: another connection can take the write lock.
        raw = sqlite3.connect(path, timeout=0.5)
        try:
            raw.execute("BEGIN IMMEDIATE")
            rows = {marker for (marker,) in raw.execute("SELECT marker FROM t")}
            raw.execute("ROLLBACK")
        finally:
            raw.close()
        # Every transaction that returned is there; a cancelled one is there only
        # if its COMMIT had been sent before the cancel (never half of one).
        assert written <= rows
        assert all(marker % 3 == 0 for marker in rows)
        await assert_healthy(op)
    finally:
        await manager.close()
