"""RedisOptions, the redacted target, and settings the manager honours (issue #15).

Against the real Redis: ``acquire_timeout`` bounds the wait for a connection
(a pool of one held busy; a dial held up by a stalled server), and
``read_only=True`` refuses every write before anything is sent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from iogate.backends.redis import (
    DEFAULT_ACQUIRE_TIMEOUT,
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REDIS_CONNECTIONS,
    AsyncRedisManager,
    RedisOptions,
)
from iogate.core.errors import ConfigError, ForbiddenStatementError
from tests.conftest import poll
from tests.integration.redis.conftest import LatencyProxy

SECRET = "s3cret-Pa55word"

# -- options ----------------------------------------------------------------------------


def test_options_defaults_and_repr_name_every_field() -> None:
    options = RedisOptions()
    assert options == RedisOptions(
        max_connections=DEFAULT_REDIS_CONNECTIONS,
        auto_pipeline=True,
        connect_timeout=DEFAULT_CONNECT_TIMEOUT,
        command_timeout=DEFAULT_COMMAND_TIMEOUT,
        acquire_timeout=DEFAULT_ACQUIRE_TIMEOUT,
        max_in_flight=DEFAULT_MAX_IN_FLIGHT,
        read_only=False,
    )
    assert repr(options) == (
        "RedisOptions(max_connections=10, auto_pipeline=True, connect_timeout=5.0, "
        "command_timeout=5.0, acquire_timeout=5.0, max_in_flight=100000, read_only=False)"
    )
    with pytest.raises(AttributeError):
        options.acquire_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        RedisOptions(10)  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_connections", 0),
        ("connect_timeout", 0),
        ("command_timeout", -1),
        ("acquire_timeout", 0),
        ("max_in_flight", 0),
    ],
)
def test_options_refuse_values_out_of_range_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        RedisOptions(**{field: value})
    with pytest.raises(ConfigError, match=field):
        AsyncRedisManager("redis://127.0.0.1:6379/0", **{field: value})


def test_seed_keywords_and_options_build_the_same_manager() -> None:
    seed = AsyncRedisManager("redis://localhost:6379", max_connections=10)
    assert seed.options == RedisOptions(max_connections=10)
    positional = AsyncRedisManager("redis://localhost:6379", 20, auto_pipeline=False)
    assert positional.options == RedisOptions(max_connections=20, auto_pipeline=False)
    given = RedisOptions(auto_pipeline=False, acquire_timeout=0.1, read_only=True)
    assert AsyncRedisManager("redis://localhost", options=given).options is not None
    assert AsyncRedisManager("redis://localhost", options=given).options == given
    # A keyword given overrides the same field of options; the rest stay.
    mixed = AsyncRedisManager("redis://localhost", options=given, acquire_timeout=0.5)
    assert mixed.options == RedisOptions(auto_pipeline=False, acquire_timeout=0.5, read_only=True)


# -- target: the URL, its password redacted -------------------------------------------------


async def test_no_password_in_repr_target_stats_or_errors(redis_url: str) -> None:
    # Port 1 refuses at once: a failed operation's message is checked too.
    manager = AsyncRedisManager(f"redis://app:{SECRET}@127.0.0.1:1/0", name="locked")
    try:
        assert manager.target == "redis://app:***@127.0.0.1:1/0"
        assert not hasattr(manager, "url")
        result = await manager.execute_query("k", {"operation": "get"})
        assert result.error_type == "connection_error"
        shown = [repr(manager), manager.target, str(manager.get_stats()), str(result.error)]
        assert not [text for text in shown if SECRET in text]
        assert "127.0.0.1:1" in str(result.error)
    finally:
        await manager.close()


async def test_a_refused_password_is_not_echoed(redis_url: str) -> None:
    # The test server has no password: AUTH is refused, its reply cleaned.
    url = redis_url.replace("redis://", f"redis://:{SECRET}@", 1)
    manager = AsyncRedisManager(url)
    try:
        result = await manager.execute_query("k", {"operation": "get"})
        assert not result.success
        assert SECRET not in str(result.error)
        assert SECRET not in repr(manager)
        assert SECRET not in manager.target
        assert SECRET not in str(manager.get_stats())
    finally:
        await manager.close()


# -- acquire_timeout ------------------------------------------------------------------------


async def test_acquire_timeout_bounds_the_wait_for_a_pooled_connection(
    redis_url: str, prefix: str
) -> None:
    manager = AsyncRedisManager(redis_url, 1, auto_pipeline=False, acquire_timeout=0.1)
    await manager.initialize_pool()
    # BLPOP on an empty list holds the pool's one connection for 2 s.
    watcher = AsyncRedisManager(redis_url)
    holder = asyncio.create_task(manager.execute_command("BLPOP", f"{prefix}empty", 2))
    try:
        # Wait (bounded) until the server runs the BLPOP: the one connection is taken.
        async def blocked() -> bool:
            clients = await watcher.execute_command("CLIENT", "LIST")
            text = clients.decode() if isinstance(clients, bytes) else str(clients)
            return "cmd=blpop" in text

        assert await poll(blocked, timeout=2.0)
        started = time.perf_counter()
        result = await manager.execute_query(f"{prefix}k", {"operation": "get"})
        waited = time.perf_counter() - started
        assert result.error_type == "pool_exhausted", result
        assert "0.1s" in str(result.error)
        assert 0.08 <= waited < 0.6, waited  # not DEFAULT_ACQUIRE_TIMEOUT (5 s)
    finally:
        await holder
        await manager.close()
        await watcher.close()


async def test_acquire_timeout_bounds_the_wait_for_the_shared_connection(
    redis_url: str, proxy: LatencyProxy
) -> None:
    # The server's reply to SELECT is held back: the dial cannot finish.
    assert not redis_url.endswith("/0")
    proxy.flowing.clear()
    manager = AsyncRedisManager(proxy.url(redis_url), acquire_timeout=0.1, connect_timeout=5)
    try:
        started = time.perf_counter()
        result = await manager.execute_query("k", {"operation": "get"})
        waited = time.perf_counter() - started
        assert result.error_type == "connection_error", result
        assert "acquire_timeout 0.1s" in str(result.error)
        assert waited < 0.6, waited
        # The dial went on for the callers after it: once Redis answers, it is used.
        proxy.flowing.set()
        later = await manager.execute_query("k", {"operation": "exists"})
        assert later.success, later
        assert manager.get_stats()["pool"]["reconnects"] == 0
    finally:
        proxy.flowing.set()
        await manager.close()


# -- read_only ------------------------------------------------------------------------------

WRITES: list[dict[str, Any]] = [
    {"operation": "set", "value": "x"},
    {"operation": "del"},
    {"operation": "incr"},
    {"operation": "expire", "ttl": 10},
    {"operation": "hset", "field": "f", "value": "v"},
    {"operation": "publish", "message": "m"},
]


@pytest.fixture(params=[True, False], ids=["auto_pipeline", "pooled"])
async def read_only_pair(request: pytest.FixtureRequest, redis_url: str, prefix: str) -> Any:
    writer = AsyncRedisManager(redis_url, name="writer")
    reader = AsyncRedisManager(
        redis_url, name="reader", options=RedisOptions(auto_pipeline=request.param, read_only=True)
    )
    await writer.execute_query(f"{prefix}k", {"operation": "set", "value": "7"})
    try:
        yield writer, reader
    finally:
        await writer.execute_query(
            "", {"operation": "delete", "keys": [f"{prefix}k", f"{prefix}n"]}
        )
        await writer.close()
        await reader.close()


async def test_read_only_redis_reads_and_refuses_every_write_before_sending(
    read_only_pair: tuple[AsyncRedisManager, AsyncRedisManager], prefix: str
) -> None:
    writer, reader = read_only_pair
    key = f"{prefix}k"
    got = await reader.execute_query(key, {"operation": "get"})
    assert got.success
    assert got.data == "7"
    assert "read_only" in repr(reader)
    sent = reader.get_stats()["pool"].get("commands")
    for params in WRITES:
        result = await reader.execute_query(key, dict(params))
        assert result.error_type == "forbidden_statement", (params, result)
        assert "read-only" in str(result.error)
    # Nothing was sent (auto-pipelined: the connection counts its commands).
    assert reader.get_stats()["pool"].get("commands") == sent
    assert (await writer.execute_query(key, {"operation": "get"})).data == "7"
    assert (await writer.execute_query(key, {"operation": "ttl"})).data == -1


@pytest.mark.parametrize("batch", ["pipeline", "transaction"])
async def test_read_only_redis_refuses_a_batch_holding_one_write_as_a_whole(
    read_only_pair: tuple[AsyncRedisManager, AsyncRedisManager], prefix: str, batch: str
) -> None:
    writer, reader = read_only_pair
    operations = [
        {"operation": "get", "key": f"{prefix}k"},
        {"operation": "set", "key": f"{prefix}n", "value": "new"},
    ]
    result = await reader.execute_query("", {"operation": batch, "operations": operations})
    assert result.error_type == "forbidden_statement", result
    assert result.data is None  # no entry ran
    assert (await writer.execute_query(f"{prefix}n", {"operation": "exists"})).data == 0
    reads = {"operation": batch, "operations": operations[:1]}
    assert (await reader.execute_query("", reads)).data == ["7"]


async def test_read_only_redis_refuses_raw_commands_that_are_not_reads(
    read_only_pair: tuple[AsyncRedisManager, AsyncRedisManager], prefix: str
) -> None:
    writer, reader = read_only_pair
    key = f"{prefix}k"
    assert await reader.execute_command("GET", key) == "7"
    assert await reader.execute_command(b"get", key) == "7"
    # Only commands that touch this test's own key: were one let through by
    # mistake, the shared test server must not suffer for it.
    for args in (
        ("EVAL", "return redis.call('SET', KEYS[1], 'evil')", 1, key),
        ("SET", key, "x"),
        ("DEL", key),
        ("PEXPIRE", key, 60_000),
        ("BITFIELD", key, "SET", "u8", 0, 1),
    ):
        with pytest.raises(ForbiddenStatementError, match="read-only"):
            await reader.execute_command(*args)
    assert (await writer.execute_query(key, {"operation": "get"})).data == "7"
