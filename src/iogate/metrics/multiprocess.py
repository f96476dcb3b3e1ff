"""Metrics of several worker processes: prometheus-client's multiprocess directory.

Each worker writes its samples to files in one shared directory; a scrape
of any worker (or of a process that only aggregates) sums them. Gauges of a
worker that exited are pruned at every render.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    generate_latest,
    multiprocess,  # untyped: its calls below carry a type: ignore
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder

from iogate.core.errors import ConfigError

__all__ = [
    "check_multiprocess",
    "encode",
    "mark_process_dead",
    "prune_dead_workers",
    "render_multiprocess",
]


def render_multiprocess(
    multiprocess_dir: str | os.PathLike[str], accept: str | None = None
) -> tuple[bytes, str]:
    """Render the metrics every process wrote to ``multiprocess_dir``.

    For a process that aggregates without recording (a supervisor, a
    sidecar, a test); it needs no multiprocess mode of its own.
    """
    path = os.fspath(multiprocess_dir)
    if not os.path.isdir(path):
        raise ConfigError(f"metrics: multiprocess_dir {path!r} is not a directory")
    prune_dead_workers(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return encode(registry, accept)


def mark_process_dead(multiprocess_dir: str | os.PathLike[str], pid: int) -> None:
    """Drop the pool and breaker gauges of worker ``pid``, which has exited.

    Its counters and histograms stay (they still count toward the totals);
    its gauges described a pool that no longer exists. The process that
    supervises the workers calls this when one of them exits.
    """
    multiprocess.mark_process_dead(pid, os.fspath(multiprocess_dir))  # type: ignore[no-untyped-call]


def prune_dead_workers(multiprocess_dir: str | os.PathLike[str]) -> list[int]:
    """``mark_process_dead`` for every worker whose live gauges outlived it.

    uvicorn restarts a crashed worker without a hook to call
    ``mark_process_dead``, and a dead worker's pool gauges would inflate the
    sums forever; so every render checks the pids itself. The directory is
    local to one host, so the pids are this host's. Returns the pids pruned.
    """
    path = os.fspath(multiprocess_dir)
    pruned: set[int] = set()
    for file in Path(path).glob("gauge_live*_*.db"):
        pid_text = file.stem.rpartition("_")[2]
        if pid_text.isdigit() and int(pid_text) not in pruned and not _alive(int(pid_text)):
            mark_process_dead(path, int(pid_text))
            pruned.add(int(pid_text))
    return sorted(pruned)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def encode(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    if not accept:
        return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def check_multiprocess(path: str) -> None:
    if not os.path.isdir(path):
        raise ConfigError(f"metrics: multiprocess_dir {path!r} is not a directory")
    # prometheus-client picks its value storage once, at import, from the
    # environment; if it chose in-memory values, nothing would reach the
    # directory and every other worker's scrape would miss this one.
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigError(
            "metrics: multiprocess_dir needs prometheus-client in multiprocess mode: "
            "set PROMETHEUS_MULTIPROC_DIR to the same directory in the worker's "
            "environment before prometheus_client is imported"
        )
