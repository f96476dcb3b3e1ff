"""The memory database type: Redis's operations and TTL semantics, no I/O."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iogate.backends.kv import parse_command
from iogate.backends.memory import AsyncMemoryManager
from iogate.core.errors import ConfigError, InvalidRequestError
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def mem(clock: FakeClock) -> AsyncIterator[AsyncMemoryManager]:
    manager = AsyncMemoryManager(name="cache", clock=clock, max_keys=50)
    async with manager:
        yield manager


async def run(mem: AsyncMemoryManager, op: str, **fields: Any) -> Any:
    result = await mem.execute_query(fields.get("key", ""), {"operation": op, **fields})
    assert result.success, result
    return result.data


async def test_seed_set_then_get_returns_the_stored_json_string(mem: AsyncMemoryManager) -> None:
    user = {"id": 123, "name": "Ada"}
    result = await mem.execute_query(
        "user:123", {"operation": "set", "key": "user:123", "value": user}
    )
    assert result.success
    assert result.resource == "cache"
    assert result.operation == "set"
    got = await mem.execute_query("user:123", {"operation": "get", "key": "user:123"})
    assert isinstance(got.data, str)
    assert json.loads(got.data) == user


async def test_key_defaults_to_the_query(mem: AsyncMemoryManager) -> None:
    await mem.execute_query("k", {"operation": "set", "value": "v"})
    assert (await mem.execute_query("k", {"operation": "get"})).data == "v"


async def test_ttl_expiry_follows_the_injected_clock(
    mem: AsyncMemoryManager, clock: FakeClock
) -> None:
    assert await run(mem, "set", key="s", value="x", ttl=10)
    assert await run(mem, "ttl", key="s") == 10
    clock.advance(9.4)
    assert await run(mem, "get", key="s") == "x"
    assert await run(mem, "ttl", key="s") == 1
    clock.advance(0.6)
    assert await run(mem, "get", key="s") is None
    assert await run(mem, "ttl", key="s") == -2
    assert await run(mem, "exists", key="s") == 0


async def test_set_without_ttl_clears_an_existing_ttl(
    mem: AsyncMemoryManager, clock: FakeClock
) -> None:
    await run(mem, "set", key="s", value="1", ttl=5)
    await run(mem, "set", key="s", value="2")
    assert await run(mem, "ttl", key="s") == -1
    clock.advance(100)
    assert await run(mem, "get", key="s") == "2"


async def test_set_nx_and_xx(mem: AsyncMemoryManager) -> None:
    assert await run(mem, "set", key="n", value="a", xx=True) is False
    assert await run(mem, "set", key="n", value="a", nx=True) is True
    assert await run(mem, "set", key="n", value="b", nx=True) is False
    assert await run(mem, "set", key="n", value="c", xx=True) is True
    assert await run(mem, "get", key="n") == "c"


async def test_expire_flags_treat_no_ttl_as_infinite(
    mem: AsyncMemoryManager, clock: FakeClock
) -> None:
    await run(mem, "set", key="e", value="v")
    assert await run(mem, "expire", key="e", ttl=10, gt=True) is False
    assert await run(mem, "expire", key="e", ttl=10, nx=True) is True
    assert await run(mem, "expire", key="e", ttl=5, gt=True) is False
    assert await run(mem, "expire", key="e", ttl=20, gt=True) is True
    assert await run(mem, "ttl", key="e") == 20
    assert await run(mem, "expire", key="missing", ttl=5) is False


async def test_counters_hashes_lists_sets(mem: AsyncMemoryManager) -> None:
    assert await run(mem, "incr", key="c") == 1
    assert await run(mem, "incrby", key="c", amount=41) == 42
    assert await run(mem, "get", key="c") == "42"
    assert await run(mem, "mset", mapping={"a": "1", "b": {"x": 1}}) is True
    assert await run(mem, "mget", keys=["a", "b", "zz"]) == ["1", '{"x":1}', None]
    assert await run(mem, "hset", key="h", field="f", value="v") == 1
    assert await run(mem, "hset", key="h", mapping={"f": "w", "g": 2}) == 1
    assert await run(mem, "hget", key="h", field="f") == "w"
    assert await run(mem, "hgetall", key="h") == {"f": "w", "g": "2"}
    assert await run(mem, "hdel", key="h", fields=["f", "g", "nope"]) == 2
    assert await run(mem, "exists", key="h") == 0  # empty hash removed, as in Redis
    assert await run(mem, "rpush", key="l", values=["b", "c"]) == 2
    assert await run(mem, "lpush", key="l", values=["a", "z"]) == 4
    assert await run(mem, "lrange", key="l") == ["z", "a", "b", "c"]
    assert await run(mem, "lrange", key="l", start=1, stop=-2) == ["a", "b"]
    assert await run(mem, "lrange", key="l", start=5, stop=9) == []
    assert await run(mem, "sadd", key="s", members=["x", "y", "x"]) == 2
    assert await run(mem, "srem", key="s", member="x") == 1
    assert await run(mem, "smembers", key="s") == ["y"]
    assert await run(mem, "delete", keys=["c", "l", "s", "none"]) == 3
    assert await run(mem, "publish", channel="ch", message="hi") == 0


async def test_wrong_type_and_not_integer_are_query_errors(mem: AsyncMemoryManager) -> None:
    await run(mem, "sadd", key="set", member="a")
    result = await mem.execute_query("set", {"operation": "get", "key": "set"})
    assert not result.success
    assert result.error_type == "query_error"
    assert result.error is not None
    assert result.error.startswith("WRONGTYPE")
    await run(mem, "set", key="word", value="abc")
    result = await mem.execute_query("word", {"operation": "incr", "key": "word"})
    assert result.error_type == "query_error"


@pytest.mark.parametrize(
    "params",
    [
        {"operation": "frobnicate", "key": "k"},
        {"key": "k"},
        {"operation": "set", "key": "k"},
        {"operation": "set", "key": "k", "value": "v", "ttl": -1},
        {"operation": "set", "key": "k", "value": "v", "nx": True, "xx": True},
        {"operation": "mget", "keys": "notalist"},
        {"operation": "hget", "key": "k"},
        {"operation": "pipeline", "operations": []},
        {"operation": "pipeline", "operations": [{"operation": "get"}]},
        {"operation": "pipeline", "operations": [{"operation": "pipeline", "operations": []}]},
        {"operation": "expire", "key": "k"},
    ],
)
async def test_bad_requests_are_invalid_request_results(
    mem: AsyncMemoryManager, params: dict[str, Any]
) -> None:
    result = await mem.execute_query("", params)
    assert not result.success
    assert result.error_type == "invalid_request", result


async def test_params_that_are_not_a_mapping_are_invalid(mem: AsyncMemoryManager) -> None:
    result = await mem.execute_query("k", ["get"])
    assert result.error_type == "invalid_request"


async def test_pipeline_and_transaction_return_one_entry_per_operation(
    mem: AsyncMemoryManager,
) -> None:
    ops = [
        {"operation": "set", "key": "p", "value": "1"},
        {"operation": "incr", "key": "p"},
        {"operation": "get", "key": "p"},
    ]
    assert await run(mem, "pipeline", operations=ops) == [True, 2, "2"]
    assert await run(mem, "transaction", operations=ops) == [True, 2, "2"]


async def test_a_failing_pipeline_entry_fails_the_result_but_the_rest_ran(
    mem: AsyncMemoryManager,
) -> None:
    await run(mem, "sadd", key="s", member="a")
    result = await mem.execute_query(
        "",
        {
            "operation": "pipeline",
            "operations": [
                {"operation": "set", "key": "ok", "value": "1"},
                {"operation": "incr", "key": "s"},
            ],
        },
    )
    assert not result.success
    assert result.error_type == "query_error"
    assert result.error is not None
    assert "#1 (incr)" in result.error
    assert result.data == [True, None]
    assert await run(mem, "get", key="ok") == "1"


async def test_read_only_refuses_writes(mem: AsyncMemoryManager) -> None:
    result = await mem.execute_query("k", {"operation": "set", "value": "v"}, read_only=True)
    assert result.error_type == "read_only"
    result = await mem.execute_query("k", {"operation": "get"}, read_only=True)
    assert result.success


async def test_a_read_only_manager_reads_and_refuses_every_write(clock: FakeClock) -> None:
    mem = AsyncMemoryManager(name="ro", clock=clock, read_only=True)
    mem.store.apply(parse_command("k", {"operation": "set", "value": "7"}))
    assert await run(mem, "get", key="k") == "7"
    assert "read_only" in repr(mem)
    for params in (
        {"operation": "set", "value": "x"},
        {"operation": "del"},
        {"operation": "incr"},
        {"operation": "expire", "ttl": 10},
        {"operation": "sadd", "member": "m"},
    ):
        result = await mem.execute_query("k", params)
        assert result.error_type == "forbidden_statement", (params, result)
        assert "ro: operation" in str(result.error)
    assert await run(mem, "get", key="k") == "7"
    assert await run(mem, "ttl", key="k") == -1


@pytest.mark.parametrize("batch", ["pipeline", "transaction"])
async def test_a_read_only_manager_refuses_a_batch_holding_a_write_as_a_whole(
    clock: FakeClock, batch: str
) -> None:
    deleted: list[str] = []
    mem = AsyncMemoryManager(clock=clock, read_only=True)
    mem.on_delete = lambda name, keys: deleted.extend(keys)
    mem.store.apply(parse_command("k", {"operation": "set", "value": "7"}))
    operations = [{"operation": "get", "key": "k"}, {"operation": "del", "key": "k"}]
    result = await mem.execute_query("", {"operation": batch, "operations": operations})
    assert result.error_type == "forbidden_statement"
    assert result.data is None
    assert len(mem.store) == 1
    assert deleted == []
    reads = await mem.execute_query("", {"operation": batch, "operations": operations[:1]})
    assert reads.data == ["7"]


def test_memory_has_no_pool_and_points_at_memory() -> None:
    mem = AsyncMemoryManager(max_keys=5)
    assert mem.target == "memory://"
    assert mem.pool_stats() == {"size": 0, "max_size": 0, "in_use": 0, "idle": 0, "waiting": 0}
    assert mem.pool_details() == {"keys": 0, "max_keys": 5, "evictions": 0}
    assert mem.get_stats()["pool"] == {**mem.pool_stats(), **mem.pool_details()}


async def test_max_keys_purges_expired_then_evicts_least_recently_used(
    clock: FakeClock,
) -> None:
    mem = AsyncMemoryManager(clock=clock, max_keys=3)
    async with mem:
        await run(mem, "set", key="a", value="1")
        await run(mem, "set", key="b", value="2", ttl=1)
        await run(mem, "set", key="c", value="3")
        clock.advance(2)
        await run(mem, "set", key="d", value="4")  # b expired
        assert mem.store.evictions == 0
        await run(mem, "get", key="a")  # a now most recent
        await run(mem, "set", key="e", value="5")  # evicts c
        assert mem.store.evictions == 1
        assert await run(mem, "get", key="c") is None
        assert await run(mem, "get", key="a") == "1"
        assert mem.get_stats()["pool"]["keys"] == 3


async def test_lifecycle_and_stats() -> None:
    mem = AsyncMemoryManager("memory://", name="m")
    assert mem.state.value == "unopened"
    await mem.execute_query("k", {"operation": "set", "value": 1})
    assert mem.state.value == "open"
    await mem.ping(1.0)
    stats = mem.get_stats()
    assert stats["type"] == "memory"
    assert stats["count"] == 1
    await mem.close()
    await mem.close()
    result = await mem.execute_query("k", {"operation": "get"})
    assert result.error_type == "closed"


async def test_transaction_context_points_at_the_transaction_operation(
    mem: AsyncMemoryManager,
) -> None:
    with pytest.raises(InvalidRequestError, match='"transaction"'):
        async with mem.transaction():
            pass


def test_rejects_a_connection_string() -> None:
    with pytest.raises(ConfigError):
        AsyncMemoryManager("redis://localhost")
