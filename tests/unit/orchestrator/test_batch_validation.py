"""Batch planning and scheduling without I/O: a memory database and an
in-process API stand-in whose calls the test releases explicitly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iogate.backends.memory import AsyncMemoryManager
from iogate.core.deadline import Deadline
from iogate.core.result import Result
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.orchestrator.batch import (
    BatchRefusedError,
    check_atomic,
    execute_batch,
    plan_batch,
)


class ScriptedAPI:
    """Answers ``request`` from a script; calls wait until released."""

    backend = "http"

    def __init__(self) -> None:
        self.name = "api"
        self.in_flight = 0
        self.peak = 0
        self.calls: list[tuple[str, str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def request(self, method: str, endpoint: str, **kwargs: Any) -> Result:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.gate.wait()
            self.calls.append((method, endpoint, kwargs.get("data")))
            if endpoint.startswith("/fail"):
                return Result.fail("upstream said 500", "http_error", status_code=500)
            return Result.ok({"endpoint": endpoint, "echo": kwargs.get("data")}, status_code=200)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        return None

    def get_stats(self) -> dict[str, Any]:
        return {}


@pytest.fixture
async def orchestrator() -> AsyncIterator[AsyncOperationOrchestrator]:
    async with AsyncOperationOrchestrator() as orch:
        orch.add_manager("cache", AsyncMemoryManager())
        orch.add_api("api", ScriptedAPI())
        yield orch


def api_of(orch: AsyncOperationOrchestrator) -> ScriptedAPI:
    api: ScriptedAPI = orch.apis["api"]
    return api


# -- planning -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "field"),
    [
        ({"db_name": "cache", "query": "k"}, "type"),
        ({"type": "database", "query": "k"}, "db_name"),
        ({"type": "database", "db_name": "cache"}, "query"),
        ({"type": "api", "api_name": "api", "method": "GET"}, "endpoint"),
        ({"type": "transaction", "db_name": "main"}, "queries"),
        ({"type": "operation"}, "name"),
    ],
)
def test_malformed_operation_names_the_missing_field(operation: dict[str, Any], field: str) -> None:
    (step,) = plan_batch([operation])
    assert step.error is not None
    assert step.error.error_type == "invalid_request"
    assert f"missing field '{field}'" in (step.error.error or "")


def test_unknown_type_and_non_object() -> None:
    steps = plan_batch([{"type": "shell"}, "DROP TABLE x"])
    assert "unknown type 'shell'" in (steps[0].error.error or "")  # type: ignore[union-attr]
    assert "must be an object" in (steps[1].error.error or "")  # type: ignore[union-attr]


def test_forward_reference_refuses_the_batch() -> None:
    ops = [
        {"type": "api", "api_name": "api", "method": "GET", "endpoint": {"$ref": "1.data"}},
        {"type": "api", "api_name": "api", "method": "GET", "endpoint": "/x"},
    ]
    with pytest.raises(BatchRefusedError, match="does not run before it"):
        plan_batch(ops)


def test_duplicate_and_bad_ids_refuse_the_batch() -> None:
    op = {"type": "api", "api_name": "api", "method": "GET", "endpoint": "/x"}
    with pytest.raises(BatchRefusedError, match="already used"):
        plan_batch([{**op, "id": "a"}, {**op, "id": "a"}])
    with pytest.raises(BatchRefusedError, match="id must be a name"):
        plan_batch([{**op, "id": "7"}])


def test_dependencies_are_recorded() -> None:
    ops = [
        {"id": "user", "type": "database", "db_name": "cache", "query": "k", "params": {}},
        {
            "type": "api",
            "api_name": "api",
            "method": "POST",
            "endpoint": "/v",
            "data": {"id": {"$ref": "user.data"}, "n": {"$ref": "0.status_code"}},
        },
    ]
    assert plan_batch(ops)[1].depends_on == frozenset({0})


async def test_atomic_refuses_api_calls_and_non_sql(
    orchestrator: AsyncOperationOrchestrator,
) -> None:
    api = {"type": "api", "api_name": "api", "method": "POST", "endpoint": "/x"}
    kv = {"type": "database", "db_name": "cache", "query": "k", "params": {"operation": "get"}}
    with pytest.raises(BatchRefusedError, match="HTTP call cannot be rolled back"):
        check_atomic(orchestrator, plan_batch([kv, api]))
    with pytest.raises(BatchRefusedError, match="memory database"):
        check_atomic(orchestrator, plan_batch([kv]))
    sql_a = {"type": "database", "db_name": "a", "query": "SELECT 1"}
    sql_b = {"type": "database", "db_name": "b", "query": "SELECT 1"}
    with pytest.raises(BatchRefusedError, match="several databases"):
        check_atomic(orchestrator, plan_batch([sql_a, sql_b]))


async def test_refused_atomic_batch_runs_nothing(orchestrator: AsyncOperationOrchestrator) -> None:
    ops = [
        {
            "type": "database",
            "db_name": "cache",
            "query": "k",
            "params": {"operation": "set", "value": 1},
        },
        {"type": "api", "api_name": "api", "method": "POST", "endpoint": "/x"},
    ]
    results = await execute_batch(orchestrator, ops, atomic=True)
    assert [r.error_type for r in results] == ["invalid_request", "invalid_request"]
    assert api_of(orchestrator).calls == []
    got = await orchestrator.execute_database_operation("cache", "k", {"operation": "get"})
    assert got.data is None


# -- scheduling -----------------------------------------------------------------------


async def test_results_in_order_and_failures_isolated(
    orchestrator: AsyncOperationOrchestrator,
) -> None:
    ops: list[Any] = []
    for i in range(30):
        endpoint = f"/fail/{i}" if i % 3 == 0 else f"/ok/{i}"
        ops.append({"type": "api", "api_name": "api", "method": "GET", "endpoint": endpoint})
    ops.append({"type": "database", "db_name": "nope", "query": "SELECT 1"})
    ops.append({"type": "bogus"})
    results = await execute_batch(orchestrator, ops, concurrency=4)
    assert len(results) == 32
    for i in range(30):
        assert results[i].success is (i % 3 != 0)
        if results[i].success:
            assert results[i].data["endpoint"] == f"/ok/{i}"
    assert results[30].error_type == "not_found"
    assert results[31].error_type == "invalid_request"


async def test_concurrency_is_bounded(orchestrator: AsyncOperationOrchestrator) -> None:
    api = api_of(orchestrator)
    api.gate.clear()
    ops = [
        {"type": "api", "api_name": "api", "method": "GET", "endpoint": f"/ok/{i}"}
        for i in range(20)
    ]
    task = asyncio.create_task(execute_batch(orchestrator, ops, concurrency=3))
    for _ in range(100):  # let every worker reach the gate
        await asyncio.sleep(0)
    assert api.in_flight == 3
    api.gate.set()
    results = await task
    assert all(r.success for r in results)
    assert api.peak == 3


async def test_dependency_failed_and_references(orchestrator: AsyncOperationOrchestrator) -> None:
    ops = [
        {"id": "bad", "type": "api", "api_name": "api", "method": "GET", "endpoint": "/fail"},
        {"id": "good", "type": "api", "api_name": "api", "method": "GET", "endpoint": "/ok/1"},
        {
            "type": "api",
            "api_name": "api",
            "method": "POST",
            "endpoint": "/after-bad",
            "data": {"from": {"$ref": "bad.data"}},
        },
        {
            "type": "database",
            "db_name": "cache",
            "query": {"$fmt": "seen:{good.data.endpoint}"},
            "params": {"operation": "set", "value": {"$ref": "good.status_code"}},
        },
        {
            "type": "api",
            "api_name": "api",
            "method": "POST",
            "endpoint": "/after-skip",
            "data": {"$ref": "2.data"},
        },
    ]
    results = await execute_batch(orchestrator, ops)
    assert [r.success for r in results] == [False, True, False, True, False]
    assert results[2].error_type == "dependency_failed"
    assert "operation 0" in (results[2].error or "")
    assert results[4].error_type == "dependency_failed"  # transitively
    got = await orchestrator.execute_database_operation("cache", "seen:/ok/1", {"operation": "get"})
    assert got.data == "200"
    assert [c[1] for c in api_of(orchestrator).calls] == ["/fail", "/ok/1"]


async def test_reference_to_a_missing_path_fails_only_that_operation(
    orchestrator: AsyncOperationOrchestrator,
) -> None:
    ops = [
        {"type": "api", "api_name": "api", "method": "GET", "endpoint": "/ok"},
        {"type": "api", "api_name": "api", "method": "GET", "endpoint": {"$fmt": "/{0.data.nope}"}},
        {"type": "api", "api_name": "api", "method": "GET", "endpoint": "/ok/2"},
    ]
    results = await execute_batch(orchestrator, ops)
    assert [r.success for r in results] == [True, False, True]
    assert results[1].error_type == "invalid_request"
    assert "no key 'nope'" in (results[1].error or "")


async def test_deadline_bounds_the_whole_batch(orchestrator: AsyncOperationOrchestrator) -> None:
    api = api_of(orchestrator)
    api.gate.clear()  # never released: only the deadline can end the batch
    deadline = Deadline(0.05)
    ops = [{"type": "api", "api_name": "api", "method": "GET", "endpoint": "/ok"}] * 5
    results = await execute_batch(orchestrator, ops, concurrency=2, deadline=deadline)
    assert [r.error_type for r in results] == ["timeout"] * 5


async def test_expired_deadline_runs_nothing(orchestrator: AsyncOperationOrchestrator) -> None:
    clock = [100.0]
    deadline = Deadline(1.0, clock=lambda: clock[0])
    clock[0] = 200.0
    ops = [{"type": "api", "api_name": "api", "method": "GET", "endpoint": "/ok"}] * 3
    results = await execute_batch(orchestrator, ops, deadline=deadline)
    assert [r.error_type for r in results] == ["timeout"] * 3
    assert api_of(orchestrator).calls == []


async def test_kv_operations_pipeline_with_per_operation_results(
    orchestrator: AsyncOperationOrchestrator,
) -> None:
    ops: list[Any] = [
        {
            "type": "database",
            "db_name": "cache",
            "query": f"k{i}",
            "params": {"operation": "set", "value": i},
        }
        for i in range(5)
    ]
    ops.append(
        {
            "type": "database",
            "db_name": "cache",
            "query": "k1",
            "params": {"operation": "incrby", "amount": 1},
        }
    )
    ops.append(
        {"type": "database", "db_name": "cache", "query": "k9", "params": {"operation": "bogus"}}
    )
    progress: list[int] = []
    results = await execute_batch(orchestrator, ops, on_result=lambda i, r: progress.append(i))
    assert [r.success for r in results] == [True] * 6 + [False]
    assert [r.data for r in results[:5]] == [True] * 5
    assert results[6].error_type == "invalid_request"
    assert sorted(progress) == list(range(7))


async def test_concurrency_must_be_positive(orchestrator: AsyncOperationOrchestrator) -> None:
    from iogate.core.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="concurrency"):
        await execute_batch(orchestrator, [], concurrency=0)
