"""Statistics and Prometheus metrics, fed by core events.

The seed 002 metrics and their decorators (``track_database_operation``,
``track_api_operation``) live in :mod:`iogate.compat`.
"""

from iogate.metrics.collector import (
    MetricsCollector,
    mark_process_dead,
    prune_dead_workers,
    render_multiprocess,
)
from iogate.metrics.stats import StatsRegistry

__all__ = [
    "MetricsCollector",
    "StatsRegistry",
    "mark_process_dead",
    "prune_dead_workers",
    "render_multiprocess",
]
