"""Cache-aside over the memory store: single-flight, expiry, keys, tags, failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iogate.backends.memory import AsyncMemoryManager
from iogate.cache import Cache, cached, default_cache
from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0)


@pytest.fixture
async def cache(clock: FakeClock) -> AsyncIterator[Cache]:
    async with Cache(AsyncMemoryManager(clock=clock)) as c:
        yield c
    await c.manager.close()


async def test_fifty_concurrent_calls_on_a_cold_key_run_the_function_once(cache: Cache) -> None:
    calls = 0
    release = asyncio.Event()

    @cached(ttl=60, database=cache)
    async def slow_square(n: int) -> int:
        nonlocal calls
        calls += 1
        await release.wait()  # every caller is waiting while the load is in progress
        return n * n

    tasks = [asyncio.create_task(slow_square(7)) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*tasks) == [49] * 50
    assert calls == 1
    assert cache.stats.loads == 1
    assert cache.stats.coalesced == 49
    assert await slow_square(7) == 49
    assert calls == 1
    assert cache.stats.hits == 1


async def test_expiry_follows_the_injected_clock(cache: Cache, clock: FakeClock) -> None:
    calls = 0

    @cached(ttl=10, database=cache)
    async def load(name: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"name": name, "call": calls}

    assert await load("a") == {"name": "a", "call": 1}
    clock.now = 9.9
    assert await load("a") == {"name": "a", "call": 1}
    clock.now = 10.0
    assert await load("a") == {"name": "a", "call": 2}
    assert calls == 2


async def test_default_key_skips_self_like_seed_002(cache: Cache) -> None:
    class Posts:
        def __init__(self) -> None:
            self.calls = 0
            self.cache = cache

        @cached(ttl=300, database=lambda self: self.cache)
        async def get_post_by_id_cached(self, post_id: str) -> dict[str, str]:
            self.calls += 1
            return {"id": post_id}

    posts = Posts()
    assert await posts.get_post_by_id_cached("42") == {"id": "42"}
    assert await posts.get_post_by_id_cached("42") == {"id": "42"}
    assert posts.calls == 1
    assert await cache.get("get_post_by_id_cached:42") == {"id": "42"}
    # Seed 002's invalidate_post_cache deletes exactly that key.
    assert await cache.delete("get_post_by_id_cached:42") == 1
    await posts.get_post_by_id_cached("42")
    assert posts.calls == 2
    assert Posts.get_post_by_id_cached.key_for(posts, "42") == "get_post_by_id_cached:42"


async def test_key_templates_callables_and_kwargs(cache: Cache) -> None:
    @cached(database=cache, key="user:{user_id}:{fields}")
    async def user(user_id: int, fields: str = "all") -> int:
        return user_id

    @cached(database=cache, key=lambda a, b: f"sum:{a + b}")
    async def add(a: int, b: int) -> int:
        return a + b

    @cached(database=cache)
    async def plain(a: int, *, flag: bool = False) -> int:
        return a

    assert user.key_for(5) == "user:5:all"
    assert add.key_for(2, 3) == "sum:5"
    assert plain.key_for(1, flag=True) == "plain:1:flag=True"
    await user(5)
    assert await cache.get("user:5:all") == 5
    assert await user.invalidate(5) == 1
    assert await cache.get("user:5:all") is None


async def test_invalidate_by_tag(cache: Cache) -> None:
    @cached(database=cache, tags=["user:{user_id}"])
    async def profile(user_id: int) -> str:
        return f"profile-{user_id}"

    @cached(database=cache, tags=["user:{user_id}"])
    async def settings(user_id: int) -> str:
        return f"settings-{user_id}"

    await profile(1)
    await settings(1)
    await profile(2)
    assert await cache.invalidate_tag("user:1") == 2
    assert await cache.get("profile:1") is None
    assert await cache.get("settings:1") is None
    assert await cache.get("profile:2") == "profile-2"
    assert await cache.invalidate_tag("user:1") == 0


async def test_none_results_are_cached_too(cache: Cache) -> None:
    calls = 0

    @cached(database=cache)
    async def missing(post_id: str) -> None:
        nonlocal calls
        calls += 1

    assert await missing("x") is None
    assert await missing("x") is None
    assert calls == 1


async def test_loader_errors_reach_every_waiter_and_are_not_cached(cache: Cache) -> None:
    attempts = 0
    release = asyncio.Event()

    @cached(database=cache)
    async def flaky(n: int) -> int:
        nonlocal attempts
        attempts += 1
        await release.wait()
        if attempts == 1:
            raise ValueError("boom")
        return n

    tasks = [asyncio.create_task(flaky(1)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert await flaky(1) == 1
    assert attempts == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_load(cache: Cache) -> None:
    release = asyncio.Event()

    @cached(database=cache)
    async def load(n: int) -> int:
        await release.wait()
        return n

    first = asyncio.create_task(load(3))
    second = asyncio.create_task(load(3))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second == 3
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_failing_backend_still_returns_the_loaders_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = AsyncMemoryManager()
    await manager.close()  # every operation now fails with error_type "closed"
    broken = Cache(manager, name="broken")

    @cached(database=broken)
    async def value(n: int) -> int:
        return n + 1

    with caplog.at_level(logging.WARNING, logger="iogate.cache"):
        assert await value(1) == 2
        assert await value(1) == 2
    assert broken.stats.errors == 4  # two lookups, two writes
    assert broken.stats.loads == 2
    assert broken.get_stats()["degraded"] is True
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # logged once when it starts, not per call
    assert "broken" in warnings[0].getMessage()


async def test_a_database_name_resolves_on_the_current_orchestrator() -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        memory = orchestrator.add_manager("cache", AsyncMemoryManager())
        calls = 0

        @cached(database="cache")
        async def answer() -> int:
            nonlocal calls
            calls += 1
            return 42

        assert await answer() == 42
        assert await answer() == 42
        assert calls == 1
        stored = await memory.execute_query("answer", {"operation": "get"})
        assert stored.data == "42"


async def test_default_cache_is_memory_and_shared() -> None:
    @cached(ttl=5)
    async def thing(n: int) -> list[int]:
        return [n]

    assert await thing(9) == [9]
    assert default_cache().backend == "memory"
    assert await default_cache().get("thing:9") == [9]
    await thing.invalidate(9)


def test_cached_refuses_a_sync_function() -> None:
    with pytest.raises(TypeError):
        cached()(lambda: 1)  # type: ignore[arg-type]


async def test_encode_and_decode_choose_what_is_stored_and_what_counts_as_a_hit(
    cache: Cache,
) -> None:
    loads: list[str] = []

    async def load(value: str) -> str:
        loads.append(value)
        return value

    def encode(value: str) -> Any:
        return None if value == "failed" else {"kept": value}

    def decode(entry: Any) -> str | None:
        return entry.get("kept") if isinstance(entry, dict) else None

    async def call(value: str) -> str:
        return await cache.get_or_load(
            "k", lambda: load(value), ttl=60, encode=encode, decode=decode
        )

    assert await call("failed") == "failed"
    assert await cache.get("k") is None  # encode gave None: nothing stored
    assert await call("good") == "good"
    assert await call("ignored") == "good"  # decoded from {"kept": "good"}
    await cache.set("k", ["another", "shape"])
    assert await call("fresh") == "fresh"  # decode gave None: a miss, reloaded
    assert await cache.get("k") == {"kept": "fresh"}
    assert loads == ["failed", "good", "fresh"]
    assert (cache.stats.hits, cache.stats.loads) == (2, 3)  # "ignored", then the last get
