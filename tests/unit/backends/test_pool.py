"""The FIFO pool's bookkeeping, with fake connections and an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from iogate.backends.pool import Pool
from iogate.core.errors import ClosedError, PoolExhaustedError
from tests.fakes import ConnectionFactory, FakeClock


def make_pool(factory: ConnectionFactory, clock: FakeClock, **overrides: float) -> Pool[int]:
    settings = {"min_size": 0, "max_size": 2, "max_idle_time": 10.0, "max_lifetime": 100.0}
    settings.update(overrides)
    return Pool(
        connect=factory.connect,
        close=factory.close,
        clock=clock,
        min_size=int(settings["min_size"]),
        max_size=int(settings["max_size"]),
        max_idle_time=settings["max_idle_time"],
        max_lifetime=settings["max_lifetime"],
    )


async def test_open_fills_min_size_and_repr_shows_counters() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock, min_size=2)
    await pool.open()
    assert factory.opened == 2
    assert repr(pool) == "<Pool size=2/2 in_use=0 idle=2 waiting=0>"
    await pool.close()
    assert sorted(factory.closed) == [1, 2]


async def test_release_hands_connection_to_oldest_waiter() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock, max_size=1)
    first = await pool.acquire(1.0)
    waiters = [asyncio.create_task(pool.acquire(1.0)) for _ in range(3)]
    await asyncio.sleep(0)  # let them queue (one loop turn, no waiting on time)
    assert pool.stats()["waiting"] == 3
    pool.release(first)
    # The releasing task cannot take it back: the first waiter owns it now.
    assert pool.stats() == {"size": 1, "max_size": 1, "in_use": 1, "idle": 0, "waiting": 2}
    got = await waiters[0]
    assert got is first
    pool.release(got)
    pool.release(await waiters[1])
    pool.release(await waiters[2])
    assert pool.stats()["in_use"] == 0
    await pool.close()


async def test_acquire_times_out_with_pool_exhausted() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock, max_size=1)
    held = await pool.acquire(1.0)
    with pytest.raises(PoolExhaustedError, match="no connection available"):
        await pool.acquire(0.01)
    assert pool.stats()["waiting"] == 0
    pool.release(held)
    await pool.close()


async def test_cancelled_waiter_does_not_swallow_a_connection() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock, max_size=1)
    held = await pool.acquire(1.0)
    waiter = asyncio.create_task(pool.acquire(5.0))
    await asyncio.sleep(0)
    pool.release(held)  # granted to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.stats() == {"size": 1, "max_size": 1, "in_use": 0, "idle": 1, "waiting": 0}
    await pool.close()


async def test_idle_and_lifetime_expiry() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock)
    conn = await pool.acquire(1.0)
    pool.release(conn)
    clock.now = 11.0  # idle longer than max_idle_time
    fresh = await pool.acquire(1.0)
    assert fresh.raw == 2
    await asyncio.sleep(0)
    assert factory.closed == [1]
    clock.now = 200.0  # older than max_lifetime: closed on release
    pool.release(fresh)
    await asyncio.sleep(0)
    assert factory.closed == [1, 2]
    assert pool.stats()["size"] == 0
    await pool.close()


async def test_discard_frees_capacity_for_a_waiter() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock, max_size=1)
    broken = await pool.acquire(1.0)
    waiter = asyncio.create_task(pool.acquire(1.0))
    await asyncio.sleep(0)
    pool.release(broken, discard=True)
    replacement = await waiter
    assert replacement.raw == 2
    assert pool.stats()["size"] == 1
    pool.release(replacement)
    await pool.close()


async def test_failed_connect_releases_capacity() -> None:
    clock = FakeClock(0.0)
    attempts = 0

    async def flaky_connect() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("refused")
        return attempts

    async def close(conn: int) -> None:
        return None

    pool: Pool[int] = Pool(
        connect=flaky_connect,
        close=close,
        clock=clock,
        min_size=0,
        max_size=1,
        max_idle_time=10,
        max_lifetime=10,
    )
    with pytest.raises(OSError, match="refused"):
        await pool.acquire(1.0)
    assert pool.stats()["size"] == 0
    conn = await pool.acquire(1.0)
    assert conn.raw == 2
    pool.release(conn)
    await pool.close()


async def test_closed_pool_refuses_and_fails_waiters() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock, max_size=1)
    held = await pool.acquire(1.0)
    waiter = asyncio.create_task(pool.acquire(5.0))
    await asyncio.sleep(0)
    await pool.close()
    with pytest.raises(ClosedError):
        await waiter
    with pytest.raises(ClosedError):
        await pool.acquire(1.0)
    pool.release(held)  # closed on release
    await asyncio.sleep(0)
    assert factory.closed == [1]
