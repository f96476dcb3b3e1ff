"""Statistics and Prometheus metrics, fed by core events."""

from iogate.metrics.collector import (
    MetricsCollector,
    mark_process_dead,
    prune_dead_workers,
    render_multiprocess,
)
from iogate.metrics.decorators import (
    API_OPERATION_DURATION,
    API_OPERATION_ERRORS,
    DB_OPERATION_DURATION,
    DB_OPERATION_ERRORS,
    track_api_operation,
    track_database_operation,
)
from iogate.metrics.stats import StatsRegistry

__all__ = [
    "API_OPERATION_DURATION",
    "API_OPERATION_ERRORS",
    "DB_OPERATION_DURATION",
    "DB_OPERATION_ERRORS",
    "MetricsCollector",
    "StatsRegistry",
    "mark_process_dead",
    "prune_dead_workers",
    "render_multiprocess",
    "track_api_operation",
    "track_database_operation",
]
