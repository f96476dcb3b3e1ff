"""Result, errors, deadlines, stats and config objects (pure logic)."""

from __future__ import annotations

import builtins
import datetime as dt
import decimal
import json
import random
import uuid

import pytest

import iogate
from iogate import errors
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError, OperationTimeoutError, QueryError
from iogate.core.jsonable import jsonable
from iogate.core.redact import redact_url
from iogate.core.result import Result
from iogate.core.stats import LatencySketch, OperationStats


def test_public_facade_is_sorted_and_importable() -> None:
    assert iogate.__all__ == sorted(iogate.__all__)
    for name in iogate.__all__:
        assert hasattr(iogate, name), name


def test_seed_error_names_and_builtin_subclassing() -> None:
    assert issubclass(errors.TimeoutError, builtins.TimeoutError)
    assert issubclass(errors.ConnectionError, builtins.ConnectionError)
    assert errors.TimeoutError is not builtins.TimeoutError
    for name in (
        "DatabaseError",
        "QueryError",
        "APIError",
        "RateLimitError",
        "AuthenticationError",
    ):
        assert issubclass(getattr(errors, name), errors.IogateError)
    assert issubclass(errors.QueryError, errors.DatabaseError)
    assert issubclass(errors.RateLimitError, errors.APIError)


def test_result_json_round_trip() -> None:
    result = Result.ok([{"a": 1}], resource="db", operation="query", rows_affected=1)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["success"] is True
    assert data["rows_affected"] == 1
    assert set(data) == {
        "success",
        "data",
        "error",
        "error_type",
        "resource",
        "operation",
        "duration_ms",
        "attempts",
        "rows_affected",
        "last_insert_id",
        "status_code",
        "truncated",
    }


def test_result_from_exceptions() -> None:
    assert Result.from_exception(QueryError("bad")).error_type == "query_error"
    assert Result.from_exception(OperationTimeoutError("slow")).error_type == "timeout"
    unknown = Result.from_exception(KeyError("postgres://u:secret@h"))
    assert unknown.error_type == "internal_error"
    assert "secret" not in (unknown.error or "")


def test_jsonable_conversions() -> None:
    value = {
        "u": uuid.UUID("5d9b6a0e-4a2f-4e1c-9b1e-2c3d4e5f6a7b"),
        "d": decimal.Decimal("1.10"),
        "t": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "b": b"\x01\x02",
        "span": dt.timedelta(minutes=1),
        "nested": [(1, 2)],
    }
    assert jsonable(value) == {
        "u": "5d9b6a0e-4a2f-4e1c-9b1e-2c3d4e5f6a7b",
        "d": "1.10",
        "t": "2026-01-02T03:04:05+00:00",
        "b": "AQI=",
        "span": 60.0,
        "nested": [[1, 2]],
    }


def test_deadline_with_injected_clock() -> None:
    now = [100.0]
    deadline = Deadline(2.0, clock=lambda: now[0])
    assert deadline.remaining() == 2.0
    assert deadline.cap(5.0) == 2.0
    assert deadline.cap(1.0) == 1.0
    now[0] = 103.0
    assert deadline.expired()
    assert deadline.remaining() == 0.0
    assert Deadline.never().cap(3.0) == 3.0
    assert Deadline.never().remaining() is None


def test_latency_sketch_percentiles_within_one_percent() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(0, 1) * 10 for _ in range(20_000)]
    sketch = LatencySketch()
    for v in values:
        sketch.add(v)
    ordered = sorted(values)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[int(q * (len(ordered) - 1))]
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) / exact < 0.02, (q, estimate, exact)
    assert len(sketch._buckets) < 2000


def test_operation_stats_snapshot() -> None:
    now = [1000.0]
    stats = OperationStats(clock=lambda: now[0])
    for i in range(10):
        stats.record(float(i + 1), None if i < 8 else "timeout")
    snap = stats.snapshot()
    assert snap["count"] == 10
    assert snap["errors_by_type"] == {"timeout": 2}
    assert snap["success_rate"] == 0.8
    assert snap["throughput_per_s"] == pytest.approx(10 / 60, abs=1e-3)
    now[0] += 61
    assert stats.snapshot()["throughput_per_s"] == 0


def test_database_options_validate() -> None:
    assert DatabaseOptions().max_connections == 20
    with pytest.raises(ConfigError, match="min_connections"):
        DatabaseOptions(min_connections=5, max_connections=2)
    with pytest.raises(ConfigError, match="unknown database option: max_conections"):
        DatabaseOptions.from_kwargs(max_conections=3)
    with pytest.raises(ConfigError, match="acquire_timeout"):
        DatabaseOptions(acquire_timeout=0)


def test_redact_url() -> None:
    assert redact_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://h/db?password=pw&x=1") == "postgresql://h/db?password=***&x=1"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
