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
from iogate.metrics.collector import mark_process_dead, render_multiprocess

WORKER = textwrap.dedent(
    """
    import asyncio
    import os
    import sys

    from iogate.core.events import OperationEvent, emit
    from iogate.metrics.collector import MetricsCollector
    from iogate.metrics.decorators import track_database_operation

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
    print(os.getpid())
    """
)


def run_worker(directory: Path, in_use: int) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(in_use)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def values(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def test_two_workers_are_summed_in_one_render(tmp_path: Path) -> None:
    pids = [run_worker(tmp_path, in_use=2), run_worker(tmp_path, in_use=3)]
    assert pids[0] != pids[1]

    body, content_type = render_multiprocess(tmp_path)
    assert content_type.startswith("text/plain")
    samples = values(body)
    op = frozenset(
        {
            "kind": "database",
            "resource": "main_db",
            "backend": "postgresql",
            "operation": "query",
        }.items()
    )
    assert samples["iogate_operation_duration_seconds_count", op] == 20
    assert samples["iogate_operations_total", op | {("outcome", "success")}] == 20
    seed = frozenset({"operation": "mp_query"}.items())
    assert samples["db_operation_duration_seconds_count", seed] == 6
    pool = frozenset({"resource": "main_db"}.items())
    assert samples["iogate_pool_in_use", pool] == 5  # livesum: 2 + 3
    assert samples["iogate_pool_size", pool] == 10

    # When a worker exits its pool is gone, but its counts still count.
    mark_process_dead(tmp_path, pids[0])
    samples = values(render_multiprocess(tmp_path)[0])
    assert samples["iogate_pool_in_use", pool] == 3
    assert samples["iogate_operation_duration_seconds_count", op] == 20


def test_render_multiprocess_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        render_multiprocess(tmp_path / "missing")
