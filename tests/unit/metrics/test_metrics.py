"""Metrics: seed 002 decorators, the event-fed collector, per-operation stats."""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from iogate.compat.metrics import track_api_operation, track_database_operation
from iogate.core.errors import ConfigError
from iogate.core.events import OperationEvent, PoolEvent, emit
from iogate.core.resource import Health, Kind, PoolStats, ResourceState
from iogate.core.result import Result
from iogate.core.stats import LatencySketch
from iogate.metrics.collector import MetricsCollector
from iogate.metrics.stats import StatsRegistry

SEED_NAMES = {
    "db_operation_duration_seconds",
    "db_operation_errors",  # the parser strips the _total suffix of counters
    "api_operation_duration_seconds",
    "api_operation_errors",
}


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition, keyed by name and label set."""
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(body: bytes, name: str, **labels: str) -> float | None:
    return samples(body).get((name, frozenset(labels.items())))


def op_event(**overrides: Any) -> OperationEvent:
    fields: dict[str, Any] = {
        "resource": "main_db",
        "kind": "database",
        "backend": "postgresql",
        "operation": "query",
        "duration_s": 0.002,
        "error_type": None,
        "attempts": 1,
    }
    fields.update(overrides)
    return OperationEvent(**fields)


@pytest.fixture
def collector() -> Iterator[MetricsCollector]:
    with MetricsCollector() as installed:
        yield installed


# -- seed 002 decorators ----------------------------------------------------------


def seed_value(name: str, operation: str) -> float:
    return REGISTRY.get_sample_value(name, {"operation": operation}) or 0.0


async def test_track_database_operation_observes_success_and_counts_errors() -> None:
    @track_database_operation("unit_db_ok")
    async def ok() -> str:
        return "done"

    @track_database_operation("unit_db_boom")
    async def boom() -> None:
        raise ValueError("boom")

    assert await ok() == "done"
    assert seed_value("db_operation_duration_seconds_count", "unit_db_ok") == 1
    assert seed_value("db_operation_errors_total", "unit_db_ok") == 0

    with pytest.raises(ValueError, match="boom"):
        await boom()
    assert seed_value("db_operation_errors_total", "unit_db_boom") == 1
    # As in the seed, a raising call observes no duration.
    assert seed_value("db_operation_duration_seconds_count", "unit_db_boom") == 0
    assert ok.__name__ == "ok"  # functools.wraps


async def test_track_api_operation_counts_a_failed_result_as_an_error() -> None:
    @track_api_operation("unit_api_failed")
    async def failed() -> Result:
        return Result.fail("upstream said 500", "http_error", status_code=500)

    result = await failed()
    assert not result.success
    assert seed_value("api_operation_errors_total", "unit_api_failed") == 1
    assert seed_value("api_operation_duration_seconds_count", "unit_api_failed") == 1


def test_tracking_a_sync_function_is_refused() -> None:
    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async"):
        track_database_operation("unit_sync")(sync)  # type: ignore[arg-type]


async def test_render_parses_and_contains_the_seed_metrics(
    collector: MetricsCollector,
) -> None:
    @track_database_operation("unit_render_db")
    async def db() -> int:
        return 1

    @track_api_operation("unit_render_api")
    async def api() -> int:
        raise RuntimeError("down")

    await db()
    with pytest.raises(RuntimeError):
        await api()

    body, content_type = collector.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert families >= SEED_NAMES
    assert value(body, "db_operation_duration_seconds_count", operation="unit_render_db") == 1
    assert value(body, "api_operation_errors_total", operation="unit_render_api") == 1


# -- the event-fed collector -----------------------------------------------------


def test_operation_events_become_durations_outcomes_errors_and_retries(
    collector: MetricsCollector,
) -> None:
    emit(op_event(duration_s=0.003))
    emit(op_event(duration_s=0.004))
    emit(op_event(duration_s=0.5, error_type="timeout", attempts=3))
    emit(op_event(kind="api", backend="http", resource="ext", operation="GET"))

    body, _ = collector.render()
    labels = {"kind": "database", "resource": "main_db", "backend": "postgresql"}
    labels["operation"] = "query"
    assert value(body, "iogate_operation_duration_seconds_count", **labels) == 3
    assert value(body, "iogate_operation_duration_seconds_sum", **labels) == pytest.approx(0.507)
    # 0.003 and 0.004 are under 5 ms, 0.5 is not.
    assert value(body, "iogate_operation_duration_seconds_bucket", **labels, le="0.005") == 2
    assert value(body, "iogate_operations_total", **labels, outcome="success") == 2
    assert value(body, "iogate_operations_total", **labels, outcome="error") == 1
    assert value(body, "iogate_operation_errors_total", **labels, error_type="timeout") == 1
    assert value(body, "iogate_operation_retries_total", **labels) == 2
    api_labels = {"kind": "api", "resource": "ext", "backend": "http", "operation": "GET"}
    assert value(body, "iogate_operations_total", **api_labels, outcome="success") == 1


def test_pool_events_feed_the_acquire_wait_histogram(collector: MetricsCollector) -> None:
    for wait in (0.0002, 0.002, 0.2):
        emit(PoolEvent(resource="main_db", backend="postgresql", wait_s=wait, acquired=True))
    emit(PoolEvent(resource="main_db", backend="postgresql", wait_s=5.0, acquired=False))

    body, _ = collector.render()
    labels = {"resource": "main_db", "backend": "postgresql"}
    assert value(body, "iogate_pool_acquire_wait_seconds_count", **labels) == 3
    assert value(body, "iogate_pool_acquire_wait_seconds_bucket", **labels, le="0.001") == 1
    assert value(body, "iogate_pool_acquire_failures_total", **labels) == 1


def test_install_is_idempotent_and_uninstall_stops_observing() -> None:
    collector = MetricsCollector()
    labels = {"kind": "database", "resource": "main_db", "backend": "postgresql"}
    labels["operation"] = "query"
    try:
        collector.install()
        collector.install()
        emit(op_event())
        assert collector.installed
    finally:
        collector.uninstall()
    collector.uninstall()
    emit(op_event())
    body, _ = collector.render()
    assert value(body, "iogate_operations_total", **labels, outcome="success") == 1
    assert not collector.installed
    assert "installed=False" in repr(collector)


def test_collectors_have_separate_registries() -> None:
    with MetricsCollector() as first:
        emit(op_event())
    with MetricsCollector() as second:
        pass
    labels = {"kind": "database", "resource": "main_db", "backend": "postgresql"}
    labels["operation"] = "query"
    assert value(first.render()[0], "iogate_operations_total", **labels, outcome="success") == 1
    assert value(second.render()[0], "iogate_operations_total", **labels, outcome="success") is None


def test_an_injected_registry_receives_the_metrics() -> None:
    registry = CollectorRegistry()
    with MetricsCollector(registry=registry) as collector:
        emit(op_event())
    assert collector.registry is registry
    assert (
        registry.get_sample_value(
            "iogate_operations_total",
            {
                "kind": "database",
                "resource": "main_db",
                "backend": "postgresql",
                "operation": "query",
                "outcome": "success",
            },
        )
        == 1
    )


def test_openmetrics_is_served_when_the_scraper_asks_for_it(
    collector: MetricsCollector,
) -> None:
    emit(op_event())
    body, content_type = collector.render(accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics_families(body.decode())}
    assert "iogate_operations" in names
    assert "db_operation_duration_seconds" in names


class BreakerState(enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


def test_pool_and_breaker_gauges_are_sampled_at_render(collector: MetricsCollector) -> None:
    pools: dict[str, dict[str, int]] = {
        "main_db": {"size": 4, "max_size": 10, "in_use": 3, "idle": 1, "waiting": 2}
    }
    breakers: dict[str, Any] = {"ext": BreakerState.OPEN, "other": "half-open"}
    collector.add_pool_source(lambda: pools)
    collector.add_breaker_source(lambda: breakers)

    body, _ = collector.render()
    assert value(body, "iogate_pool_size", resource="main_db") == 4
    assert value(body, "iogate_pool_max_size", resource="main_db") == 10
    assert value(body, "iogate_pool_in_use", resource="main_db") == 3
    assert value(body, "iogate_pool_idle", resource="main_db") == 1
    assert value(body, "iogate_pool_waiting", resource="main_db") == 2
    assert value(body, "iogate_circuit_breaker_state", resource="ext") == 2
    assert value(body, "iogate_circuit_breaker_state", resource="other") == 1

    # The present, not a history: a resource that is gone disappears.
    pools.clear()
    breakers.clear()
    breakers["ext"] = "closed"
    body, _ = collector.render()
    assert value(body, "iogate_pool_size", resource="main_db") is None
    assert value(body, "iogate_circuit_breaker_state", resource="ext") == 0


def test_a_failing_source_is_logged_and_does_not_break_render(
    collector: MetricsCollector, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, dict[str, int]]:
        raise RuntimeError("pool gone")

    collector.add_pool_source(broken)
    collector.add_pool_source(lambda: {"ok_db": {"size": 1}})
    with caplog.at_level(logging.ERROR, logger="iogate.metrics"):
        body, _ = collector.render()
    assert value(body, "iogate_pool_size", resource="ok_db") == 1
    assert "pool source" in caplog.text


class FakeManager:
    """Stands in for a manager: the collector reads its kind, pool and health."""

    def __init__(self, pool: dict[str, int] | None, breaker: str | None) -> None:
        self._pool = {
            "size": 0,
            "max_size": 0,
            "in_use": 0,
            "idle": 0,
            "waiting": 0,
            **(pool or {}),
        }
        self.kind = Kind.DATABASE if breaker is None else Kind.API
        self._breaker = breaker or "disabled"

    def pool_stats(self) -> PoolStats:
        return PoolStats(**self._pool)  # type: ignore[typeddict-item]

    def health(self) -> Health:
        return Health(ResourceState.OPEN, self._breaker)


class FakeOrchestrator:
    def __init__(self) -> None:
        self.databases: dict[str, Any] = {}
        self.apis: dict[str, Any] = {}


def test_watch_samples_every_manager_including_later_ones(collector: MetricsCollector) -> None:
    orchestrator = FakeOrchestrator()
    orchestrator.databases["main_db"] = FakeManager({"size": 2, "in_use": 1}, None)
    collector.watch(orchestrator)
    orchestrator.apis["ext"] = FakeManager(None, "open")

    body, _ = collector.render()
    assert value(body, "iogate_pool_size", resource="main_db") == 2
    assert value(body, "iogate_pool_in_use", resource="main_db") == 1
    assert value(body, "iogate_circuit_breaker_state", resource="ext") == 2
    assert value(body, "iogate_circuit_breaker_state", resource="main_db") is None


def test_multiprocess_dir_must_be_a_directory(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        MetricsCollector(multiprocess_dir=tmp_path / "missing")


def test_multiprocess_dir_needs_prometheus_multiprocess_mode(tmp_path: Any) -> None:
    # This test process did not set PROMETHEUS_MULTIPROC_DIR before import.
    with pytest.raises(ConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        MetricsCollector(multiprocess_dir=tmp_path)


# -- percentiles and per-operation stats --------------------------------------------


def exact_quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted list, the reference for the sketch."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def workload(count: int = 10_000) -> list[float]:
    """Durations in ms from a fixed log-normal distribution (median ~20 ms)."""
    rng = random.Random(20240601)
    return [rng.lognormvariate(math.log(20), 0.8) for _ in range(count)]


@pytest.mark.parametrize("q", [0.50, 0.95, 0.99])
def test_latency_sketch_agrees_with_exact_percentiles(q: float) -> None:
    durations = workload()
    sketch = LatencySketch()
    for duration in durations:
        sketch.add(duration)
    estimate = sketch.quantile(q)
    exact = exact_quantile(sorted(durations), q)
    assert estimate is not None
    assert estimate == pytest.approx(exact, rel=0.10)


def test_stats_registry_percentiles_agree_within_ten_percent() -> None:
    durations = workload()
    with StatsRegistry() as registry:
        for duration in durations:
            emit(op_event(kind="operation", operation="get_user", duration_s=duration / 1000))
    snapshot = registry.snapshot()["get_user"]
    ordered = sorted(durations)
    assert snapshot["count"] == len(durations)
    assert snapshot["resource"] == "main_db"
    for key, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        assert snapshot["latency_ms"][key] == pytest.approx(exact_quantile(ordered, q), rel=0.10)


def test_stats_registry_success_rate_throughput_and_kind_filter() -> None:
    now = [1000.0]
    registry = StatsRegistry(clock=lambda: now[0])
    with registry:
        for _ in range(30):
            emit(op_event(kind="operation", operation="get_user"))
        emit(op_event(kind="operation", operation="get_user", error_type="query_error"))
        emit(op_event(kind="database", operation="query"))  # not a named operation
        now[0] += 10
        for _ in range(29):
            emit(op_event(kind="operation", operation="get_user"))
    snapshot = registry.snapshot()
    assert set(snapshot) == {"get_user"}
    stats = snapshot["get_user"]
    assert stats["count"] == 60
    assert stats["errors_by_type"] == {"query_error": 1}
    assert stats["success_rate"] == pytest.approx(59 / 60)
    assert stats["throughput_per_s"] == pytest.approx(1.0)  # 60 in the last minute
    now[0] += 61
    assert registry.snapshot()["get_user"]["throughput_per_s"] == 0


def test_stats_registry_caps_the_number_of_operations() -> None:
    registry = StatsRegistry(max_operations=2)
    for name in ("a", "b", "c", "a"):
        registry.record(op_event(kind="operation", operation=name))
    assert set(registry.snapshot()) == {"a", "b"}
    assert registry.dropped == 1
    stats = registry.get("a")
    assert stats is not None
    assert stats.count == 2
    assert "dropped=1" in repr(registry)
