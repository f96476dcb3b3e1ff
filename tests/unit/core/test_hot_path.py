"""The shared per-operation path: what its shortcuts must not change.

``execute_query`` checks the manager state inline, shares one never-ending
Deadline, rounds durations without ``round(x, 3)``, records stats through
bound methods and builds an ``OperationEvent`` only when a hook listens.
These tests pin the behaviour each shortcut has to keep.
"""

from __future__ import annotations

import enum
import math
import types

import pytest

from iogate.backends.kv import Command, parse_command
from iogate.backends.memory import AsyncMemoryManager
from iogate.core import events, recording
from iogate.core.deadline import Deadline
from iogate.core.events import Event, OperationEvent, add_hook, emit, remove_hook
from iogate.core.result import Result
from iogate.core.stats import LatencySketch, OperationStats


@pytest.fixture
def no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from no installed hooks, whatever other tests left behind."""
    monkeypatch.setattr(events, "hooks", ())


async def test_no_event_is_built_when_no_hook_listens(
    no_hooks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError(f"event built or emitted without a hook: {args!r}")

    monkeypatch.setattr(events, "emit", refuse)
    monkeypatch.setattr(recording, "OperationEvent", refuse)
    async with AsyncMemoryManager(name="cache") as mem:
        result = await mem.execute_query("k", {"operation": "get", "key": "k"})
    assert result.success
    assert mem.get_stats()["count"] == 1


async def test_one_event_per_operation_with_the_result_fields(no_hooks: None) -> None:
    seen: list[Event] = []
    add_hook(seen.append)
    try:
        async with AsyncMemoryManager(name="cache") as mem:
            ok = await mem.execute_query("k", {"operation": "set", "key": "k", "value": "v"})
            bad = await mem.execute_query("k", {"operation": "incr", "key": "k"})
    finally:
        remove_hook(seen.append)
    assert events.hooks == ()
    assert [type(e) for e in seen] == [OperationEvent, OperationEvent]
    first, second = seen
    assert isinstance(first, OperationEvent)
    assert isinstance(second, OperationEvent)
    assert (first.resource, first.kind, first.backend, first.operation) == (
        "cache",
        "database",
        "memory",
        "set",
    )
    assert first.error_type is None
    assert first.attempts == 1
    assert first.duration_s * 1000 == pytest.approx(ok.duration_ms, abs=1e-3)
    assert second.operation == "incr"
    assert second.error_type == bad.error_type == "query_error"
    with pytest.raises(AttributeError):
        first.resource = "other"  # type: ignore[misc]


def test_a_hook_that_removes_itself_does_not_skip_the_next(no_hooks: None) -> None:
    calls: list[str] = []

    def once(event: Event) -> None:
        calls.append("once")
        remove_hook(once)

    def always(event: Event) -> None:
        calls.append("always")

    add_hook(once)
    add_hook(always)
    add_hook(always)  # idempotent
    event = OperationEvent("r", "database", "memory", "get", 0.001, None)
    emit(event)
    emit(event)
    remove_hook(always)
    assert calls == ["once", "always", "always"]
    assert events.hooks == ()


async def test_lazy_open_closed_manager_and_expired_deadline() -> None:
    mem = AsyncMemoryManager(name="cache")
    result = await mem.execute_query("k", {"operation": "get", "key": "k"})
    assert result.success
    assert mem.state.value == "open"
    expired = Deadline(0.0, clock=lambda: 5.0)
    late = await mem.execute_query("k", {"operation": "get", "key": "k"}, deadline=expired)
    assert (late.success, late.error_type, late.resource, late.operation) == (
        False,
        "timeout",
        "cache",
        "query",
    )
    await mem.close()
    closed = await mem.execute_query("k", {"operation": "get", "key": "k"})
    assert (closed.success, closed.error_type) == (False, "closed")
    assert mem.get_stats()["errors_by_type"] == {"timeout": 1, "closed": 1}


async def test_duration_is_whole_microseconds_and_feeds_the_stats() -> None:
    async with AsyncMemoryManager(name="cache") as mem:
        results = [await mem.execute_query("k", {"operation": "get"}) for _ in range(20)]
        stats = mem.get_stats()
    for result in results:
        assert result.duration_ms >= 0
        assert result.duration_ms == round(result.duration_ms, 3)
    assert stats["count"] == 20
    assert stats["latency_ms"]["max"] == max(r.duration_ms for r in results)


def test_never_is_one_shared_deadline_that_never_passes() -> None:
    never = Deadline.never()
    assert Deadline.never() is never
    assert never.expires_at is None
    assert not never.expired()
    assert never.remaining() is None
    assert repr(never) == "Deadline(none)"


def test_result_ok_sets_every_field_where_it_belongs() -> None:
    result = Result.ok(
        [1],
        resource="db",
        operation="query",
        rows_affected=3,
        status_code=200,
        truncated=True,
        last_insert_id=7,
    )
    assert result.to_dict() == {
        "success": True,
        "data": [1],
        "error": None,
        "error_type": None,
        "resource": "db",
        "operation": "query",
        "duration_ms": 0.0,
        "attempts": 1,
        "rows_affected": 3,
        "last_insert_id": 7,
        "status_code": 200,
        "truncated": True,
    }
    assert result.headers is None
    assert result.retry_after is None


def test_latency_sketch_clamps_tiny_values_and_tracks_min_max() -> None:
    sketch = LatencySketch()
    for value in (0.0, 1e-6, 1e-3, 5.0, 2.5):
        sketch.add(value)
    assert (sketch.count, sketch.min, sketch.max) == (5, 0.0, 5.0)
    assert sketch.total == pytest.approx(7.501001)
    # The three values at or below 1 microsecond share the lowest bucket.
    assert len(sketch._buckets) == 3
    median = sketch.quantile(0.5)
    assert median is not None
    assert median <= 1e-3 * 1.01
    top = sketch.quantile(1.0)
    assert top is not None
    assert math.isclose(top, 5.0, rel_tol=0.01)


def test_parse_command_takes_any_mapping_and_the_command_is_immutable() -> None:
    params = types.MappingProxyType({"operation": "get", "key": "k"})
    command = parse_command("ignored", params)
    assert command == Command(op="get", key="k")
    with pytest.raises(AttributeError):
        command.key = "other"  # type: ignore[misc]


class Colour(enum.StrEnum):
    RED = "red"


async def test_get_returns_a_value_stored_from_a_str_subclass() -> None:
    async with AsyncMemoryManager(name="cache") as mem:
        await mem.execute_query("k", {"operation": "set", "key": "k", "value": Colour.RED})
        result = await mem.execute_query("k", {"operation": "get", "key": "k"})
        wrong = await mem.execute_query("h", {"operation": "hset", "field": "f", "value": "v"})
        wrong_get = await mem.execute_query("h", {"operation": "get", "key": "h"})
    assert result.data == "red"
    assert wrong.success
    assert (wrong_get.success, wrong_get.error_type) == (False, "query_error")
    assert "WRONGTYPE" in (wrong_get.error or "")


def test_throughput_counts_the_last_sixty_whole_seconds() -> None:
    now = [1000.0]
    stats = OperationStats(clock=lambda: now[0])
    for moment, operations in ((1000.0, 5), (1001.5, 3), (1059.9, 2)):
        now[0] = moment
        for _ in range(operations):
            stats.record(1.0, None)
    assert stats.snapshot()["throughput_per_s"] == round(10 / 60, 3)
    now[0] = 1060.2  # second 1000 has left the window
    assert stats.snapshot()["throughput_per_s"] == round(5 / 60, 3)
    now[0] = 1061.0
    assert stats.snapshot()["throughput_per_s"] == round(2 / 60, 3)
    stats.record(1.0, None)  # a new second after a gap
    assert stats.snapshot()["throughput_per_s"] == round(3 / 60, 3)
    now[0] = 1200.0
    assert stats.snapshot()["throughput_per_s"] == 0
    assert stats.count == 11
