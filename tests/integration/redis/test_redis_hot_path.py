"""The auto-pipelined hot path under deadlines: one loop timer per command.

A deadline fails only its own caller; the slot stays in the FIFO until its
reply arrives, so the replies after it still reach the right callers.
"""

from __future__ import annotations

import asyncio
import random

from iogate.backends.redis import AsyncRedisManager
from iogate.core.deadline import Deadline
from tests.integration.redis.conftest import LatencyProxy


async def test_deadlines_that_pass_mid_flight_keep_the_stream_in_step(
    redis_url: str, proxy: LatencyProxy, prefix: str
) -> None:
    proxy.max_delay = 0.004
    manager = AsyncRedisManager(proxy.url(redis_url))
    keys = [f"{prefix}{i}" for i in range(600)]
    rng = random.Random(11)
    try:
        await manager.execute_query(
            "", {"operation": "mset", "mapping": {k: f"value-{k}" for k in keys}}
        )
        budgets = [rng.choice((0.0005, 0.002, 30.0)) for _ in keys]
        results = await asyncio.gather(
            *(
                manager.execute_query(key, {"operation": "get"}, deadline=Deadline(budget))
                for key, budget in zip(keys, budgets, strict=True)
            )
        )
        timed_out = 0
        for key, budget, result in zip(keys, budgets, results, strict=True):
            if result.success:
                assert result.data == f"value-{key}"
            else:
                assert result.error_type == "timeout", result
                assert budget < 1, (budget, result)
                timed_out += 1
        assert 0 < timed_out < len(keys)
        assert all(r.success for r, b in zip(results, budgets, strict=True) if b > 1)
        # Late replies of the timed-out commands were dropped, not handed on.
        check = await manager.execute_query(keys[3], {"operation": "get"})
        assert check.data == f"value-{keys[3]}"
        assert manager.get_stats()["pool"]["reconnects"] == 0
    finally:
        await manager.execute_query("", {"operation": "delete", "keys": keys})
        await manager.close()


async def test_a_timed_out_reply_is_dropped_when_it_finally_comes(
    redis_url: str, proxy: LatencyProxy, prefix: str
) -> None:
    manager = AsyncRedisManager(proxy.url(redis_url))
    try:
        await manager.execute_query(f"{prefix}a", {"operation": "set", "value": "A"})
        await manager.execute_query(f"{prefix}b", {"operation": "set", "value": "B"})
        proxy.flowing.clear()
        late = await manager.execute_query(
            f"{prefix}a", {"operation": "get"}, deadline=Deadline(0.05)
        )
        assert (late.success, late.error_type, late.operation) == (False, "timeout", "get")
        pending = asyncio.create_task(
            manager.execute_query(f"{prefix}b", {"operation": "get"}, deadline=Deadline(30))
        )
        proxy.flowing.set()
        result = await pending
        assert result.data == "B"
        assert manager.get_stats()["pool"]["in_flight"] == 0
        assert manager.get_stats()["errors_by_type"] == {"timeout": 1}
    finally:
        proxy.flowing.set()
        await manager.execute_query(
            "", {"operation": "delete", "keys": [f"{prefix}a", f"{prefix}b"]}
        )
        await manager.close()


async def test_an_already_expired_deadline_sends_nothing(redis_url: str, prefix: str) -> None:
    manager = AsyncRedisManager(redis_url)
    try:
        await manager.ping()
        commands = manager.get_stats()["pool"]["commands"]
        expired = Deadline(0.0, clock=lambda: 1.0)
        result = await manager.execute_query(f"{prefix}k", {"operation": "get"}, deadline=expired)
        assert (result.success, result.error_type) == (False, "timeout")
        assert manager.get_stats()["pool"]["commands"] == commands
    finally:
        await manager.close()
