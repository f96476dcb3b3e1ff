"""AsyncRedisManager against the real Redis: operations, parity with the memory
store, auto-pipelining, failures and secrets."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from iogate.backends.memory import AsyncMemoryManager
from iogate.backends.redis import AsyncRedisManager
from iogate.core.deadline import Deadline
from iogate.core.errors import DatabaseConnectionError, InvalidRequestError
from tests.conftest import free_port
from tests.integration.redis.conftest import LatencyProxy

pytestmark = pytest.mark.redis


async def test_seed_000_example_runs_as_written(redis_url: str, prefix: str) -> None:
    user_data = {"id": 123, "name": "Ada", "tags": ["a", "b"]}
    manager = AsyncRedisManager(redis_url, max_connections=10)
    await manager.initialize_pool()
    try:
        result = await manager.execute_query(
            f"{prefix}user:123",
            {"operation": "set", "key": f"{prefix}user:123", "value": user_data},
        )
        assert result.success, result
        got = await manager.execute_query(
            f"{prefix}user:123", {"operation": "get", "key": f"{prefix}user:123"}
        )
        assert json.loads(got.data) == user_data
        assert got.resource == "redis"
        assert got.operation == "get"
    finally:
        await manager.close()


def _script(p: str) -> list[dict[str, Any]]:
    """Every operation, with the replies of each compared across backends."""
    return [
        {"operation": "set", "key": f"{p}s", "value": "v", "ttl": 100},
        {"operation": "get", "key": f"{p}s"},
        {"operation": "ttl", "key": f"{p}s"},
        {"operation": "set", "key": f"{p}s", "value": "w", "nx": True},
        {"operation": "set", "key": f"{p}s", "value": "w", "xx": True},
        {"operation": "ttl", "key": f"{p}s"},
        {"operation": "expire", "key": f"{p}s", "ttl": 50, "gt": True},
        {"operation": "expire", "key": f"{p}s", "ttl": 50, "nx": True},
        {"operation": "expire", "key": f"{p}missing", "ttl": 50},
        {"operation": "ttl", "key": f"{p}s"},
        {"operation": "set", "key": f"{p}j", "value": {"a": [1, 2.5, None, True]}},
        {"operation": "get", "key": f"{p}j"},
        {"operation": "incr", "key": f"{p}n"},
        {"operation": "incrby", "key": f"{p}n", "amount": -5},
        {"operation": "incr", "key": f"{p}s"},
        {"operation": "mset", "mapping": {f"{p}m1": "1", f"{p}m2": 2}},
        {"operation": "mget", "keys": [f"{p}m1", f"{p}m2", f"{p}none"]},
        {"operation": "hset", "key": f"{p}h", "field": "f", "value": "1"},
        {"operation": "hset", "key": f"{p}h", "mapping": {"f": "2", "g": {"x": 1}}},
        {"operation": "hget", "key": f"{p}h", "field": "g"},
        {"operation": "hgetall", "key": f"{p}h"},
        {"operation": "hdel", "key": f"{p}h", "fields": ["f", "nope"]},
        {"operation": "hget", "key": f"{p}s", "field": "f"},
        {"operation": "rpush", "key": f"{p}l", "values": ["a", "b"]},
        {"operation": "lpush", "key": f"{p}l", "values": ["y", "z"]},
        {"operation": "lrange", "key": f"{p}l", "start": 1, "stop": -1},
        {"operation": "sadd", "key": f"{p}set", "members": ["b", "a", "b"]},
        {"operation": "srem", "key": f"{p}set", "member": "b"},
        {"operation": "smembers", "key": f"{p}set"},
        {"operation": "exists", "keys": [f"{p}s", f"{p}l", f"{p}none"]},
        {
            "operation": "pipeline",
            "operations": [
                {"operation": "incr", "key": f"{p}n"},
                {"operation": "get", "key": f"{p}n"},
                {"operation": "lpush", "key": f"{p}s", "value": "x"},
            ],
        },
        {
            "operation": "transaction",
            "operations": [
                {"operation": "incrby", "key": f"{p}n", "amount": 10},
                {"operation": "get", "key": f"{p}n"},
            ],
        },
        {"operation": "delete", "keys": [f"{p}s", f"{p}l", f"{p}none"]},
        {"operation": "get", "key": f"{p}s"},
        {"operation": "publish", "channel": f"{p}chan", "message": "hello"},
    ]


def _comparable(result: Any) -> tuple[Any, ...]:
    return (result.success, result.error_type, result.data, result.operation)


async def test_every_operation_matches_the_memory_store(
    redis_manager: AsyncRedisManager, prefix: str
) -> None:
    memory = AsyncMemoryManager()
    try:
        for step in _script(prefix):
            on_redis = await redis_manager.execute_query(step.get("key", ""), step)
            on_memory = await memory.execute_query(step.get("key", ""), step)
            assert _comparable(on_redis) == _comparable(on_memory), step
    finally:
        await memory.close()
        await redis_manager.execute_query(
            "", {"operation": "delete", "keys": [f"{prefix}{k}" for k in "jnhm"]}
        )


@pytest.mark.parametrize(
    "params",
    [
        {"operation": "flushall"},
        {"key": "k"},
        {"operation": "set", "key": "k"},
        {"operation": "hget", "key": "k"},
        {"operation": "pipeline", "operations": [{"operation": "nope"}]},
        {"operation": "lrange", "key": "k", "start": "zero"},
        {"operation": "incrby", "key": "k"},
    ],
)
async def test_bad_requests_fail_with_invalid_request(
    redis_manager: AsyncRedisManager, params: dict[str, Any]
) -> None:
    result = await redis_manager.execute_query("", params)
    assert not result.success
    assert result.error_type == "invalid_request", result


async def test_transaction_context_is_refused_with_a_pointer(
    redis_manager: AsyncRedisManager,
) -> None:
    with pytest.raises(InvalidRequestError, match="transaction"):
        async with redis_manager.transaction():
            pass


async def test_fifty_concurrent_gets_share_a_few_writes(redis_url: str, prefix: str) -> None:
    manager = AsyncRedisManager(redis_url)
    try:
        await manager.execute_query(f"{prefix}k", {"operation": "set", "value": "v"})
        before = manager.get_stats()["pool"]["writes"]
        results = await asyncio.gather(
            *(manager.execute_query(f"{prefix}k", {"operation": "get"}) for _ in range(50))
        )
        assert all(r.data == "v" for r in results)
        writes = manager.get_stats()["pool"]["writes"] - before
        assert writes <= 3, writes
        await manager.execute_query(f"{prefix}k", {"operation": "delete"})
    finally:
        await manager.close()


@pytest.mark.parametrize("auto_pipeline", [True, False], ids=["auto_pipeline", "pooled"])
async def test_random_cancellations_never_deliver_a_reply_to_the_wrong_caller(
    redis_url: str, proxy: LatencyProxy, prefix: str, auto_pipeline: bool
) -> None:
    """Thousands of GETs through a relay that delays and splits replies; a third
    are cancelled at random moments; every survivor must see its own value."""
    proxy.max_delay = 0.002
    manager = AsyncRedisManager(proxy.url(redis_url), 20, auto_pipeline=auto_pipeline)
    count = 3000 if auto_pipeline else 1000
    keys = [f"{prefix}{i}" for i in range(count)]
    rng = random.Random(42)
    try:
        await manager.execute_query(
            "", {"operation": "mset", "mapping": {k: f"value-{k}" for k in keys}}
        )
        loop = asyncio.get_running_loop()
        tasks = []
        for key in keys:
            task = asyncio.create_task(manager.execute_query(key, {"operation": "get"}))
            tasks.append(task)
            chance = rng.random()
            if chance < 0.1:
                loop.call_soon(task.cancel)  # before its command is written
            elif chance < 0.35:
                loop.call_later(rng.uniform(0, 0.02), task.cancel)  # most likely in flight
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        survivors = cancelled = 0
        for key, outcome in zip(keys, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                cancelled += 1
                continue
            assert not isinstance(outcome, BaseException), outcome
            assert outcome.success, outcome
            assert outcome.data == f"value-{key}"
            survivors += 1
        assert cancelled > count // 5
        assert survivors > count // 2
        # The stream is still in step afterwards.
        check = await manager.execute_query(keys[7], {"operation": "get"})
        assert check.data == f"value-{keys[7]}"
    finally:
        await manager.execute_query("", {"operation": "delete", "keys": keys})
        await manager.close()


async def test_lost_connection_fails_waiters_and_the_next_call_reconnects(
    redis_url: str, proxy: LatencyProxy, prefix: str
) -> None:
    manager = AsyncRedisManager(proxy.url(redis_url))
    try:
        await manager.execute_query(f"{prefix}k", {"operation": "set", "value": "v"})
        proxy.flowing.clear()
        pending = asyncio.create_task(manager.execute_query(f"{prefix}k", {"operation": "get"}))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        proxy.drop_connections()
        result = await pending
        assert result.error_type == "connection_error"
        proxy.flowing.set()
        again = await manager.execute_query(f"{prefix}k", {"operation": "get"})
        assert again.data == "v"
        assert manager.get_stats()["pool"]["reconnects"] == 1
        await manager.execute_query(f"{prefix}k", {"operation": "delete"})
    finally:
        await manager.close()


async def test_a_silent_connection_is_discarded_after_command_timeout(
    redis_url: str, proxy: LatencyProxy, prefix: str
) -> None:
    manager = AsyncRedisManager(proxy.url(redis_url), command_timeout=0.2)
    try:
        await manager.ping()
        proxy.flowing.clear()
        result = await manager.execute_query(f"{prefix}k", {"operation": "get"})
        assert result.error_type == "timeout"
        assert manager.get_stats()["pool"]["connections"] == 0
        proxy.flowing.set()
        assert (await manager.execute_query(f"{prefix}k", {"operation": "get"})).success
    finally:
        await manager.close()


@pytest.mark.parametrize("auto_pipeline", [True, False], ids=["auto_pipeline", "pooled"])
async def test_a_deadline_bounds_the_call(
    redis_url: str, proxy: LatencyProxy, prefix: str, auto_pipeline: bool
) -> None:
    manager = AsyncRedisManager(proxy.url(redis_url), auto_pipeline=auto_pipeline)
    try:
        await manager.ping()
        proxy.flowing.clear()
        result = await manager.execute_query(
            f"{prefix}k", {"operation": "get"}, deadline=Deadline(0.05)
        )
        assert result.error_type == "timeout"
    finally:
        proxy.flowing.set()
        await manager.close()


@pytest.mark.parametrize("auto_pipeline", [True, False], ids=["auto_pipeline", "pooled"])
async def test_unreachable_redis_is_a_connection_error_without_the_password(
    auto_pipeline: bool,
) -> None:
    url = f"redis://admin:hunter2secret@127.0.0.1:{free_port()}/0"
    manager = AsyncRedisManager(url, auto_pipeline=auto_pipeline, connect_timeout=1)
    try:
        with pytest.raises(DatabaseConnectionError) as caught:
            await manager.ping(1.0)
        assert "hunter2secret" not in str(caught.value)
        result = await manager.execute_query("k", {"operation": "get"})
        assert result.error_type == "connection_error"
        assert "hunter2secret" not in (result.error or "")
        assert "hunter2secret" not in repr(manager)
    finally:
        await manager.close()


@pytest.mark.parametrize("auto_pipeline", [True, False], ids=["auto_pipeline", "pooled"])
async def test_refused_auth_is_a_connection_error_without_the_password(
    redis_url: str, auto_pipeline: bool
) -> None:
    url = redis_url.replace("redis://", "redis://nobody:hunter2secret@", 1)
    manager = AsyncRedisManager(url, auto_pipeline=auto_pipeline)
    try:
        result = await manager.execute_query("k", {"operation": "get"})
        assert result.error_type == "connection_error"
        assert "hunter2secret" not in (result.error or "")
    finally:
        await manager.close()


async def test_stats_and_lifecycle(redis_manager: AsyncRedisManager, prefix: str) -> None:
    await redis_manager.execute_query(f"{prefix}k", {"operation": "get"})
    stats = redis_manager.get_stats()
    assert stats["type"] == "redis"
    assert stats["state"] == "open"
    assert stats["count"] == 1
    await redis_manager.close()
    await redis_manager.close()
    result = await redis_manager.execute_query(f"{prefix}k", {"operation": "get"})
    assert result.error_type == "closed"
