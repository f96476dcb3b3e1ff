"""Metrics fed by a real PostgreSQL manager behind a real orchestrator."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iogate import AsyncOperationOrchestrator, DatabaseType
from iogate.metrics.collector import MetricsCollector
from tests.conftest import poll

pytestmark = pytest.mark.postgres


def value(body: bytes, name: str, **labels: str) -> float | None:
    wanted = labels.items()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels.items() == wanted:
                return sample.value
    return None


QUERY_LABELS = {
    "kind": "database",
    "resource": "main_db",
    "backend": "postgresql",
    "operation": "query",
}


async def test_queries_and_live_pool_state_reach_the_metrics(postgres_url: str) -> None:
    with MetricsCollector() as collector:
        async with AsyncOperationOrchestrator() as orchestrator:
            await orchestrator.add_database_manager(
                "main_db", DatabaseType.POSTGRESQL, postgres_url, max_connections=4
            )
            collector.watch(orchestrator)

            slow = [
                asyncio.create_task(
                    orchestrator.execute_database_operation("main_db", "SELECT pg_sleep(0.3)", None)
                )
                for _ in range(6)
            ]

            def pool_busy() -> bool:
                body, _ = collector.render()
                in_use = value(body, "iogate_pool_in_use", resource="main_db") or 0
                waiting = value(body, "iogate_pool_waiting", resource="main_db") or 0
                return in_use == 4 and waiting == 2

            # Six queries on four connections: the gauges show the queue live.
            assert await poll(pool_busy, timeout=5.0)
            results = await asyncio.gather(*slow)
            assert all(r.success for r in results), [r.error for r in results]

            bad = await orchestrator.execute_database_operation("main_db", "SELEC 1", None)
            assert bad.error_type == "query_error"

            body, _ = collector.render()
            assert value(body, "iogate_pool_in_use", resource="main_db") == 0
            assert value(body, "iogate_pool_max_size", resource="main_db") == 4

    assert value(body, "iogate_operations_total", **QUERY_LABELS, outcome="success") == 6
    assert value(body, "iogate_operations_total", **QUERY_LABELS, outcome="error") == 1
    assert (
        value(body, "iogate_operation_errors_total", **QUERY_LABELS, error_type="query_error") == 1
    )
    assert value(body, "iogate_operation_duration_seconds_count", **QUERY_LABELS) == 7
    # Every pg_sleep(0.3) took at least 0.3 s.
    assert value(body, "iogate_operation_duration_seconds_bucket", **QUERY_LABELS, le="0.25") == 1
