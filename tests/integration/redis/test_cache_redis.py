"""Cache-aside over the real Redis, and over a Redis that is not there."""

from __future__ import annotations

import asyncio
import logging

import pytest

from iogate.backends.redis import AsyncRedisManager
from iogate.cache import Cache, cached
from iogate.core.errors import DatabaseConnectionError
from tests.conftest import free_port, poll
from tests.integration.redis.conftest import LatencyProxy

pytestmark = pytest.mark.redis


async def test_single_flight_and_tags_over_redis(redis_url: str, prefix: str) -> None:
    async with Cache(redis_url, namespace=prefix) as cache:
        calls = 0
        release = asyncio.Event()

        @cached(ttl=30, database=cache, tags=["post:{post_id}"])
        async def post(post_id: int) -> dict[str, object]:
            nonlocal calls
            calls += 1
            await release.wait()
            return {"id": post_id, "title": "hello"}

        tasks = [asyncio.create_task(post(1)) for _ in range(50)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*tasks)
        assert results == [{"id": 1, "title": "hello"}] * 50
        assert calls == 1

        raw = await cache.manager.execute_query(
            f"{prefix}post:1", {"operation": "get", "key": f"{prefix}post:1"}
        )
        assert raw.data == '{"id":1,"title":"hello"}'
        ttl = await cache.manager.execute_query(
            f"{prefix}post:1", {"operation": "ttl", "key": f"{prefix}post:1"}
        )
        assert 0 < ttl.data <= 30

        assert await cache.invalidate_tag("post:1") == 1
        assert await cache.get("post:1") is None
        await post(1)
        assert calls == 2
        await cache.invalidate_tag("post:1")


async def test_with_redis_down_the_loader_value_is_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://:topsecretpw@127.0.0.1:{free_port()}/0"
    async with Cache(url, name="redis_down") as cache:
        calls = 0

        @cached(ttl=30, database=cache)
        async def load(n: int) -> int:
            nonlocal calls
            calls += 1
            return n * 10

        with caplog.at_level(logging.WARNING, logger="iogate.cache"):
            assert [await load(i) for i in range(5)] == [0, 10, 20, 30, 40]
        assert calls == 5
        assert cache.stats.errors >= 5
        assert cache.get_stats()["degraded"] is True
        assert "topsecretpw" not in caplog.text
        with pytest.raises(DatabaseConnectionError):
            await cache.ping(1.0)


async def test_redis_recovering_ends_the_degraded_state(
    redis_url: str, proxy: LatencyProxy, prefix: str
) -> None:
    manager = AsyncRedisManager(proxy.url(redis_url), name="flaky", command_timeout=0.2)
    async with manager, Cache(manager, namespace=prefix) as cache:
        assert await cache.set("k", 1) is True
        proxy.flowing.clear()  # Redis stops answering
        assert await cache.get_or_load("k2", _two) == 2
        assert cache.get_stats()["degraded"] is True
        proxy.flowing.set()
        # Reconnects are backed off for a moment after a failure: poll.
        assert await poll(lambda: cache.set("k", 3), timeout=5)
        assert cache.get_stats()["degraded"] is False
        assert await cache.get("k") == 3
        await cache.delete("k", "k2")


async def _two() -> int:
    return 2
