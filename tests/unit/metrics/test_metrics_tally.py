"""The single-process collector tallies events and builds families on collect.

It must expose exactly what prometheus-client's own Histogram and Counter
would (same names, labels, buckets, sums, ``_created`` series) and stay
exact when several threads emit at once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from iogate.core.events import Event, OperationEvent, PoolEvent
from iogate.metrics.collector import (
    DEFAULT_ACQUIRE_BUCKETS,
    DEFAULT_DURATION_BUCKETS,
    MetricsCollector,
)
from iogate.metrics.feed import PrometheusEvents

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(body: str, *, openmetrics: bool = False) -> Samples:
    parse = openmetrics_families if openmetrics else text_string_to_metric_families
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parse(body)
        for s in family.samples
    }


def random_events(seed: int, count: int) -> list[Event]:
    rng = random.Random(seed)
    out: list[Event] = []
    for _ in range(count):
        if rng.random() < 0.2:
            out.append(
                PoolEvent(
                    rng.choice(("main_db", "other")),
                    "postgresql",
                    rng.choice((0.00005, 0.001, 0.3, 20.0)),
                    rng.random() < 0.8,
                )
            )
            continue
        out.append(
            OperationEvent(
                rng.choice(("main_db", "cache")),
                rng.choice(("database", "api")),
                rng.choice(("postgresql", "redis")),
                rng.choice(("query", "get", "GET")),
                # Exactly on a bucket bound too: le means "less or equal".
                rng.choice((0.0001, 0.0005, 0.004, 0.01, 0.7, 45.0, rng.random())),
                rng.choice((None, None, None, "timeout", "query_error")),
                rng.choice((1, 1, 2, 3)),
            )
        )
    return out


def without_created_values(found: Samples) -> Samples:
    return {key: (0.0 if key[0].endswith("_created") else v) for key, v in found.items()}


def in_runs(events: list[Event]) -> list[Event]:
    """The same events, those of one label set next to each other (long runs)."""
    return sorted(events, key=lambda e: e[:4] if isinstance(e, OperationEvent) else ("~",))


def one_label_set(events: list[Event]) -> list[Event]:
    """The operation events only, all given the labels of the first one."""
    operations = [e for e in events if isinstance(e, OperationEvent)]
    labels = operations[0][:4]
    return [OperationEvent(*labels, *e[4:]) for e in operations]


@pytest.mark.parametrize(
    "order", [None, in_runs, one_label_set], ids=["interleaved", "in-runs", "one-label-set"]
)
@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_tallies_expose_what_prometheus_objects_would(
    openmetrics: bool, order: Callable[[list[Event]], list[Event]] | None
) -> None:
    # Interleaved label sets are tallied event by event, runs of one label
    # set all at once (TalliedEvents._tally_run), a queue of one label set
    # column by column: all must match exactly.
    events = random_events(3, 3000)
    if order is not None:
        events = order(events)
    reference_registry = CollectorRegistry()
    reference = PrometheusEvents(DEFAULT_DURATION_BUCKETS, DEFAULT_ACQUIRE_BUCKETS)
    for metric in (
        reference.duration,
        reference.operations,
        reference.errors,
        reference.retries,
        reference.acquire_wait,
        reference.acquire_failures,
    ):
        reference_registry.register(metric)
    collector = MetricsCollector(registry=CollectorRegistry())
    for event in events:
        reference.observe(event)
        collector._hook(event)

    encode = openmetrics_latest if openmetrics else generate_latest
    expected = samples(encode(reference_registry).decode(), openmetrics=openmetrics)
    everything = samples(encode(collector.registry).decode(), openmetrics=openmetrics)
    event_fed = ("iogate_operation", "iogate_pool_acquire")
    found = {k: v for k, v in everything.items() if k[0].startswith(event_fed)}
    assert any(k[0].endswith("_created") for k in expected)
    assert without_created_values(found) == without_created_values(expected)


def test_threads_emitting_at_once_lose_no_count() -> None:
    collector = MetricsCollector(registry=CollectorRegistry())
    per_thread, threads = 20_000, 4
    event = OperationEvent("main_db", "database", "postgresql", "query", 0.002, None, 2)
    failure = PoolEvent("main_db", "postgresql", 5.0, False)

    def work() -> None:
        for _ in range(per_thread):
            collector._hook(event)
            collector._hook(failure)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in workers)
    registry = collector.registry
    labels = {"kind": "database", "resource": "main_db", "backend": "postgresql"}
    labels["operation"] = "query"
    total = per_thread * threads
    assert registry.get_sample_value("iogate_operation_duration_seconds_count", labels) == total
    assert registry.get_sample_value(
        "iogate_operation_duration_seconds_sum", labels
    ) == pytest.approx(0.002 * total)
    assert registry.get_sample_value("iogate_operation_retries_total", labels) == total
    assert (
        registry.get_sample_value(
            "iogate_pool_acquire_failures_total", {"resource": "main_db", "backend": "postgresql"}
        )
        == total
    )


def test_a_second_collector_on_one_registry_is_refused() -> None:
    registry = CollectorRegistry()
    MetricsCollector(registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        MetricsCollector(registry=registry)


def test_unsorted_and_infinite_buckets_are_normalised() -> None:
    collector = MetricsCollector(
        registry=CollectorRegistry(), duration_buckets=(1.0, 0.1, float("inf"), 0.1)
    )
    collector._hook(OperationEvent("r", "database", "memory", "get", 0.5, None))
    body = generate_latest(collector.registry).decode()
    found = samples(body)
    labels = {"kind": "database", "resource": "r", "backend": "memory", "operation": "get"}
    buckets = sorted(
        dict(key[1])["le"]
        for key in found
        if key[0] == "iogate_operation_duration_seconds_bucket"
        and dict(key[1]).items() >= labels.items()
    )
    assert buckets == ["+Inf", "0.1", "1.0"]


def test_collecting_while_threads_emit_loses_and_doubles_no_count() -> None:
    # The hook queues events without a lock; a scrape in another thread
    # tallies the queue while the emitters keep appending to it.
    collector = MetricsCollector(registry=CollectorRegistry())
    per_thread, threads = 20_000, 3
    event = OperationEvent("api", "api", "http", "GET", 0.002, None, 1)
    labels = {"kind": "api", "resource": "api", "backend": "http", "operation": "GET"}
    done = threading.Event()
    seen: list[float] = []

    def work() -> None:
        for _ in range(per_thread):
            collector._hook(event)

    def scrape() -> None:
        while not done.is_set():
            value = collector.registry.get_sample_value(
                "iogate_operations_total", {**labels, "outcome": "success"}
            )
            seen.append(value or 0.0)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    done.set()
    scraper.join(timeout=60)
    assert not any(t.is_alive() for t in (*workers, scraper))
    total = per_thread * threads
    assert seen == sorted(seen)  # never counted back
    assert all(value <= total for value in seen)
    registry = collector.registry
    assert registry.get_sample_value("iogate_operation_duration_seconds_count", labels) == total
    assert registry.get_sample_value(
        "iogate_operations_total", {**labels, "outcome": "success"}
    ) == (total)


def test_every_event_counts_at_the_next_collection_however_few() -> None:
    collector = MetricsCollector(registry=CollectorRegistry())
    labels = {"kind": "api", "resource": "api", "backend": "http", "operation": "GET"}
    for expected in (1, 2, 3):
        collector._hook(OperationEvent("api", "api", "http", "GET", 0.002, None, 1))
        assert (
            collector.registry.get_sample_value("iogate_operation_duration_seconds_count", labels)
            == expected
        )
