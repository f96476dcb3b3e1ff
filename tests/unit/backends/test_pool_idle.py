"""The pool's idle check and its opening, with fake connections and an injected clock.

A connection idle longer than ``check_idle_after`` is checked before it is
handed out; one used more recently is handed out unchecked. ``open`` is all
or nothing within its timeout.
"""

from __future__ import annotations

import asyncio

import pytest

from iogate.backends.pool import Pool
from tests.fakes import ConnectionFactory, FakeClock


def make_pool(
    factory: ConnectionFactory, clock: FakeClock, *, check_after: float = 2.0
) -> Pool[int]:
    return Pool(
        connect=factory.connect,
        close=factory.close,
        clock=clock,
        min_size=0,
        max_size=3,
        max_idle_time=100.0,
        max_lifetime=1000.0,
        check=factory.check,
        check_idle_after=check_after,
    )


async def settle() -> None:
    """Let the pool's background closes run (no time passes)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_recently_used_connection_is_not_checked() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock)
    pool.release(await pool.acquire(1.0))
    clock.now = 2.0  # exactly the interval: still recent
    conn = await pool.acquire(1.0)
    assert conn.raw == 1
    assert factory.checked == []
    pool.release(conn)
    await pool.close()


async def test_connection_idle_past_interval_is_checked_once() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock)
    pool.release(await pool.acquire(1.0))
    clock.now = 2.5
    conn = await pool.acquire(1.0)
    assert conn.raw == 1
    assert factory.checked == [1]
    pool.release(conn)  # used again now: recent
    assert (await pool.acquire(1.0)).raw == 1
    assert factory.checked == [1]
    await pool.close()


async def test_dead_idle_connections_are_replaced_not_handed_out() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock)
    held = [await pool.acquire(1.0) for _ in range(3)]
    for conn in held:
        pool.release(conn)
    factory.dead = {1, 2, 3}  # the server ended all three while they sat idle
    clock.now = 10.0
    conn = await pool.acquire(1.0)
    assert conn.raw == 4  # a new connection, after discarding every dead one
    assert sorted(factory.checked) == [1, 2, 3]
    assert pool.checks_failed == 3
    await settle()
    assert sorted(factory.closed) == [1, 2, 3]
    assert pool.stats() == {"size": 1, "max_size": 3, "in_use": 1, "idle": 0, "waiting": 0}
    pool.release(conn)
    await pool.close()


async def test_a_live_one_behind_dead_ones_is_used() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock)
    held = [await pool.acquire(1.0) for _ in range(3)]
    for conn in held:
        pool.release(conn)  # idle, most recent last: 1, 2, 3
    factory.dead = {3, 2}
    clock.now = 10.0
    conn = await pool.acquire(1.0)
    assert conn.raw == 1
    assert factory.opened == 3
    pool.release(conn)
    await pool.close()


async def test_check_off_with_interval_zero() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock, check_after=0.0)
    pool.release(await pool.acquire(1.0))
    factory.dead = {1}
    clock.now = 50.0
    assert (await pool.acquire(1.0)).raw == 1  # handed out unchecked
    assert factory.checked == []
    await pool.close()


async def test_a_check_that_does_not_answer_times_out_and_discards() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock)
    pool.release(await pool.acquire(1.0))
    clock.now = 10.0
    factory.check_hangs = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await pool.acquire(0.05)
    assert loop.time() - started < 0.5
    await settle()
    assert factory.closed == [1]
    assert pool.stats()["size"] == 0
    await pool.close()


async def test_cancelled_during_check_leaks_nothing() -> None:
    factory, clock = ConnectionFactory(), FakeClock(0.0)
    pool = make_pool(factory, clock)
    pool.release(await pool.acquire(1.0))
    clock.now = 10.0
    factory.check_hangs = True
    task = asyncio.create_task(pool.acquire(5.0))
    await settle()
    assert factory.checked == [1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert factory.closed == [1]
    assert pool.stats() == {"size": 0, "max_size": 3, "in_use": 0, "idle": 0, "waiting": 0}
    await pool.close()


async def test_open_is_concurrent_and_all_or_nothing() -> None:
    clock = FakeClock(0.0)
    started: list[int] = []
    closed: list[int] = []

    async def connect() -> int:
        number = len(started) + 1
        started.append(number)
        await asyncio.sleep(0)
        if number == 4:
            await asyncio.sleep(0)  # the others have opened by now
            raise OSError("refused")
        if number == 3:
            await asyncio.Event().wait()  # never answers: cancelled, not leaked
        return number

    async def close(conn: int) -> None:
        closed.append(conn)

    pool: Pool[int] = Pool(
        connect=connect,
        close=close,
        clock=clock,
        min_size=4,
        max_size=4,
        max_idle_time=10,
        max_lifetime=10,
    )
    with pytest.raises(OSError, match="refused"):
        await pool.open(1.0)
    assert started == [1, 2, 3, 4]  # all started before any finished
    await settle()
    assert sorted(closed) == [1, 2]  # the two that opened are closed, not kept
    assert pool.stats()["size"] == 0
    await pool.close()


async def test_open_times_out_and_leaves_nothing() -> None:
    clock = FakeClock(0.0)
    closed: list[int] = []

    async def slow_connect() -> int:
        await asyncio.Event().wait()
        return 7

    async def close(conn: int) -> None:
        closed.append(conn)

    pool: Pool[int] = Pool(
        connect=slow_connect,
        close=close,
        clock=clock,
        min_size=2,
        max_size=2,
        max_idle_time=10,
        max_lifetime=10,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await pool.open(0.05)
    assert loop.time() - started < 0.5
    assert pool.stats()["size"] == 0
    await pool.close()
