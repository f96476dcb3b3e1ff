"""Multiprocess metrics: two real worker processes, one directory, one render.

Each worker is a fresh interpreter started with ``PROMETHEUS_MULTIPROC_DIR``
set (as the gateway does for its workers); this test process is not in
multiprocess mode and only aggregates with ``render_multiprocess``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from iogate.core.errors import ConfigError
from iogate.metrics.collector import mark_process_dead, prune_dead_workers, render_multiprocess

WORKER = textwrap.dedent(
    """
    import asyncio
    import os
    import sys

    from iogate.core.events import OperationEvent, emit
    from iogate.metrics.collector import MetricsCollector
    from iogate.compat.metrics import track_database_operation

    in_use = int(sys.argv[1])
    collector = MetricsCollector(multiprocess_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    collector.add_pool_source(lambda: {"main_db": {"size": 5, "in_use": in_use}})

    @track_database_operation("mp_query")
    async def query() -> int:
        return 1

    with collector:
        for _ in range(10):
            emit(OperationEvent(
                resource="main_db", kind="database", backend="postgresql",
                operation="query", duration_s=0.001, error_type=None,
            ))
        for _ in range(3):
            asyncio.run(query())
    # Metrics are in the files now; stay alive (a serving worker) until told.
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    """
)


def start_worker(directory: Path, in_use: int) -> subprocess.Popen[str]:
    """A worker that has recorded its metrics and is still running."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(in_use)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    line = worker.stdout.readline()  # bounded by pytest-timeout if it hangs
    if line.strip() != str(worker.pid):
        stop_worker(worker)  # reports the failed exit code
        pytest.fail(f"worker printed {line!r} instead of its pid")
    return worker


def stop_worker(worker: subprocess.Popen[str]) -> None:
    assert worker.stdin is not None
    assert worker.stdout is not None
    worker.stdin.close()
    assert worker.wait(timeout=30) == 0
    worker.stdout.close()


OP = frozenset(
    {
        "kind": "database",
        "resource": "main_db",
        "backend": "postgresql",
        "operation": "query",
    }.items()
)
POOL = frozenset({"resource": "main_db"}.items())


def values(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def test_two_workers_are_summed_in_one_render(tmp_path: Path) -> None:
    workers = [start_worker(tmp_path, in_use=2), start_worker(tmp_path, in_use=3)]
    try:
        body, content_type = render_multiprocess(tmp_path)
        assert content_type.startswith("text/plain")
        samples = values(body)
        assert samples["iogate_operation_duration_seconds_count", OP] == 20
        assert samples["iogate_operations_total", OP | {("outcome", "success")}] == 20
        seed = frozenset({"operation": "mp_query"}.items())
        assert samples["db_operation_duration_seconds_count", seed] == 6
        assert samples["iogate_pool_in_use", POOL] == 5  # livesum: 2 + 3
        assert samples["iogate_pool_size", POOL] == 10

        # A worker exits: its pool is gone from the sums, its counts are not.
        stop_worker(workers[0])
        samples = values(render_multiprocess(tmp_path)[0])
        assert samples["iogate_pool_in_use", POOL] == 3
        assert samples["iogate_operation_duration_seconds_count", OP] == 20
    finally:
        for worker in workers:
            if worker.poll() is None:
                stop_worker(worker)


def test_a_supervisor_can_mark_a_worker_dead(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, in_use=2)
    try:
        assert values(render_multiprocess(tmp_path)[0])["iogate_pool_in_use", POOL] == 2
        mark_process_dead(tmp_path, worker.pid)
        samples = values(render_multiprocess(tmp_path)[0])
        assert ("iogate_pool_in_use", POOL) not in samples
        assert samples["iogate_operation_duration_seconds_count", OP] == 10
    finally:
        stop_worker(worker)


def test_only_dead_workers_are_pruned(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, in_use=1)
    try:
        assert prune_dead_workers(tmp_path) == []
    finally:
        stop_worker(worker)
    assert prune_dead_workers(tmp_path) == [worker.pid]
    assert not list(tmp_path.glob("gauge_live*"))


def test_render_multiprocess_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        render_multiprocess(tmp_path / "missing")
