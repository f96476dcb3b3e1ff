"""The four Prometheus metrics of seed 002, declared exactly as the seed does.

They live in prometheus-client's default registry, so
``prometheus_client.generate_latest()`` shows them; a ``MetricsCollector``
also includes them in its own ``render()``. The decorators that feed them are
in :mod:`iogate.compat.metrics`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = [
    "API_OPERATION_DURATION",
    "API_OPERATION_ERRORS",
    "DB_OPERATION_DURATION",
    "DB_OPERATION_ERRORS",
    "SEED_METRICS",
]

DB_OPERATION_DURATION = Histogram(
    "db_operation_duration_seconds", "Database operation duration", ["operation"]
)
DB_OPERATION_ERRORS = Counter(
    "db_operation_errors_total", "Database operation errors", ["operation"]
)
API_OPERATION_DURATION = Histogram(
    "api_operation_duration_seconds", "API operation duration", ["operation"]
)
API_OPERATION_ERRORS = Counter("api_operation_errors_total", "API operation errors", ["operation"])

SEED_METRICS: tuple[Histogram | Counter, ...] = (
    DB_OPERATION_DURATION,
    DB_OPERATION_ERRORS,
    API_OPERATION_DURATION,
    API_OPERATION_ERRORS,
)
