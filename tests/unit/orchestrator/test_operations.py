"""Named operations: a registry per orchestrator, cached through ``Cache``.

Python operations on the in-process memory store: no server needed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iogate.backends.memory import AsyncMemoryManager
from iogate.cache import cache_for
from iogate.core.result import Result
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.orchestrator.operations import (
    TAG_PREFIX,
    OperationCache,
    _cache_key,
    execute_named_operation,
    operation,
    python_operations,
    register_operation,
)
from iogate.orchestrator.registry import OperationRegistry


def unique(name: str) -> str:
    """A name no other test registers (python_operations is process-wide)."""
    return f"{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def orchestrator() -> AsyncIterator[AsyncOperationOrchestrator]:
    async with AsyncOperationOrchestrator() as orch:
        orch.add_manager("cache", AsyncMemoryManager())
        yield orch


async def echo(orchestrator: AsyncOperationOrchestrator, value: int) -> int:
    return value


async def test_two_orchestrators_do_not_share_their_operations() -> None:
    name = unique("echo")
    async with AsyncOperationOrchestrator() as one, AsyncOperationOrchestrator() as two:
        one.register_operation(name, function=echo)
        assert name in one.operations
        assert name not in two.operations
        found = await execute_named_operation(one, name, {"value": 3})
        missing = await execute_named_operation(two, name, {"value": 3})
    assert found.data == 3
    assert missing.error_type == "not_found"


async def test_a_decorated_function_is_seen_by_every_orchestrator() -> None:
    before = AsyncOperationOrchestrator()
    name = unique("decorated")

    @operation(name)
    async def decorated(orchestrator: AsyncOperationOrchestrator, n: int = 2) -> int:
        return n * 10

    after = AsyncOperationOrchestrator()
    try:
        # Declared after `before` was created: still found (the registries chain).
        for orch in (before, after):
            assert name in orch.operations
            assert (await orch.execute_named_operation(name, {"n": 4})).data == 40
    finally:
        await before.close()
        await after.close()


def test_an_orchestrator_registration_shadows_a_decorated_one_only_there() -> None:
    parent = OperationRegistry()
    child = OperationRegistry(parent=parent)
    other = OperationRegistry(parent=parent)
    parent.operation("shared")(echo)

    async def mine(orchestrator: Any) -> str:
        return "mine"

    child.operation("shared")(mine)
    mine_op, others_op = child.get("shared"), other.get("shared")
    assert mine_op is not None
    assert mine_op.function is mine
    assert others_op is not None
    assert others_op.function is echo
    assert python_operations.get("shared") is None


async def test_concurrent_callers_of_a_cached_operation_run_it_once(
    orchestrator: AsyncOperationOrchestrator,
) -> None:
    calls = 0
    release = asyncio.Event()

    async def slow(orch: AsyncOperationOrchestrator, id: int) -> dict[str, int]:
        nonlocal calls
        calls += 1
        await release.wait()  # every caller misses while the first one loads
        return {"id": id, "call": calls}

    name = unique("slow")
    op = register_operation(
        orchestrator,
        name,
        function=slow,
        cache=OperationCache(database="cache", ttl=60, tags=("item:{id}",)),
    )
    tasks = [
        asyncio.create_task(execute_named_operation(orchestrator, name, {"id": 1}))
        for _ in range(20)
    ]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert [r.data for r in results] == [{"id": 1, "call": 1}] * 20
    assert all(r.operation == name and r.success for r in results)
    cache = cache_for(orchestrator.get_manager("cache"))
    assert (cache.stats.loads, cache.stats.coalesced) == (1, 19)
    again = await execute_named_operation(orchestrator, name, {"id": 1})
    assert again.data == {"id": 1, "call": 1}
    assert cache.stats.hits == 1
    # Stored under the reserved namespace, listed under its tag.
    memory = orchestrator.get_manager("cache")
    key = _cache_key(op, {"id": 1})
    assert key.startswith("iogate:op:")
    members = await memory.execute_query(
        "t", {"operation": "smembers", "key": TAG_PREFIX + "item:1"}
    )
    assert members.data == [key]


async def test_a_failure_is_not_cached(orchestrator: AsyncOperationOrchestrator) -> None:
    outcomes = [Result.fail("not yet", "query_error"), Result.ok("done")]

    async def flaky(orch: AsyncOperationOrchestrator) -> Result:
        return outcomes.pop(0)

    name = unique("flaky")
    register_operation(
        orchestrator, name, function=flaky, cache=OperationCache(database="cache", ttl=60)
    )
    first = await execute_named_operation(orchestrator, name)
    second = await execute_named_operation(orchestrator, name)
    third = await execute_named_operation(orchestrator, name)
    assert (first.success, first.error_type) == (False, "query_error")
    assert second.data == "done"
    assert third.data == "done"
    assert outcomes == []  # the failure ran, then one success, then the cache


async def test_a_write_invalidates_the_entries_of_its_tags(
    orchestrator: AsyncOperationOrchestrator,
) -> None:
    state = {"n": 0}

    async def read(orch: AsyncOperationOrchestrator, id: int) -> int:
        return state["n"]

    async def bump(orch: AsyncOperationOrchestrator, id: int) -> int:
        state["n"] += 1
        return state["n"]

    reader, writer = unique("read"), unique("bump")
    tag = f"{reader}:{{id}}"
    register_operation(
        orchestrator,
        reader,
        function=read,
        cache=OperationCache(database="cache", ttl=60, tags=(tag,)),
    )
    register_operation(
        orchestrator,
        writer,
        function=bump,
        cache=OperationCache(database="cache", ttl=60, invalidates=(tag,)),
    )
    seen = []
    for _ in range(2):
        seen.append((await execute_named_operation(orchestrator, reader, {"id": 1})).data)
        seen.append((await execute_named_operation(orchestrator, reader, {"id": 1})).data)
        await execute_named_operation(orchestrator, writer, {"id": 1})
    assert seen == [0, 0, 1, 1]
    assert (await execute_named_operation(orchestrator, writer, {"id": 1})).data == 3


async def test_a_cache_database_that_is_not_registered_only_costs_the_cache() -> None:
    calls = 0

    async def count(orch: AsyncOperationOrchestrator) -> int:
        nonlocal calls
        calls += 1
        return calls

    async with AsyncOperationOrchestrator() as orch:
        name = unique("count")
        register_operation(
            orch, name, function=count, cache=OperationCache(database="gone", ttl=60)
        )
        results = [(await execute_named_operation(orch, name)).data for _ in range(2)]
    assert results == [1, 2]


async def test_a_silent_cache_does_not_hold_a_caller_past_its_deadline() -> None:
    """The cache's calls are bounded by its manager's timeouts (5 s here); the
    caller stops waiting at its own deadline, with a timeout Result."""
    from iogate.backends.redis import AsyncRedisManager
    from iogate.core.deadline import Deadline

    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with AsyncOperationOrchestrator() as orch:
            orch.add_manager("cache", AsyncRedisManager(f"redis://127.0.0.1:{port}/0"))
            name = unique("slow_cache")
            register_operation(
                orch, name, function=echo, cache=OperationCache(database="cache", ttl=60)
            )
            loop = asyncio.get_running_loop()
            started = loop.time()
            result = await execute_named_operation(orch, name, {"value": 1}, deadline=Deadline(0.3))
            elapsed = loop.time() - started
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert result.error_type == "timeout", result
    assert elapsed < 1.5
