"""The dashboard's history: the gateway samples its statistics into a bounded
ring, ``GET /dashboard/history`` returns it, and a page opened cold draws it
at once instead of starting empty.

The ring is pure logic (tested with an injected clock and a fake stats
source); the endpoint and the page run against a real ``iogate serve`` and a
real headless Chromium (the fixture from test_dashboard.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from iogate.gateway.app import create_app
from iogate.gateway.routes.dashboard import HISTORY_SAMPLES, StatsHistory
from iogate.gateway.settings import parse_settings
from tests.conftest import poll
from tests.gateway.test_dashboard import Charts, chromium, run_chromium
from tests.gateway.test_ready_proxy import serve_gateway

__all__ = ["chromium"]  # the fixture, imported for this module's tests

OBSERVER = "observer-key-0123456789abcdef"
CLIENT = "client-key-0123456789abcdef"


def stats_of(count: int) -> dict[str, Any]:
    """A ``get_stats()`` snapshot with every field a real one has."""
    return {
        "databases": {
            "main": {
                "name": "main",
                "type": "sqlite",
                "state": "open",
                "count": count,
                "errors": 1,
                "errors_by_type": {"query_error": 1},
                "success_rate": 0.5,
                "throughput_per_s": 2.0,
                "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 9.0, "mean": 1.5},
                "pool": {"size": 2, "max_size": 5, "in_use": 1, "idle": 1, "waiting": 0},
            },
            "cache": {"type": "memory", "count": 0, "pool": {"keys": 3, "max_keys": 10}},
        },
        "apis": {
            "crm": {
                "type": "http",
                "base_url": "http://127.0.0.1:1/v1",
                "count": 4,
                "circuit": {"state": "open", "failures": 5, "retry_after": 3.0},
            }
        },
    }


# -- the ring ------------------------------------------------------------------------------


def test_the_ring_is_bounded_and_keeps_the_newest_samples() -> None:
    history = StatsHistory(capacity=50)
    for second in range(500):
        history.add(float(second), stats_of(second))
        assert len(history.samples()) == min(second + 1, 50)
    samples = history.samples()
    assert [s["uptime_s"] for s in samples] == [float(t) for t in range(450, 500)]
    assert samples[-1]["databases"]["main"]["count"] == 499
    assert HISTORY_SAMPLES * 1.0 >= 120  # the default covers minutes, not seconds


def test_a_sample_keeps_what_the_page_draws_and_nothing_else() -> None:
    history = StatsHistory(capacity=3)
    history.add(12.34567, stats_of(7))
    (sample,) = history.samples()
    assert sample["uptime_s"] == 12.346
    main = sample["databases"]["main"]
    assert main["count"] == 7
    assert main["latency_ms"] == {"mean": 1.5, "p50": 1.0, "p95": 2.0, "p99": 3.0}
    assert main["pool"] == {"size": 2, "max_size": 5, "in_use": 1, "idle": 1, "waiting": 0}
    assert "errors_by_type" not in main
    assert "name" not in main
    assert "pool" not in sample["databases"]["cache"]  # a key count, not connections
    crm = sample["apis"]["crm"]
    assert crm["circuit"] == {"state": "open"}
    assert "base_url" not in crm


async def test_the_sampler_follows_its_source_and_survives_a_failing_sample(
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = StatsHistory(capacity=100)
    counts = iter([1, 2, None, 4, 5, 6, 7, 8, 9, 10] + [11] * 1000)
    clock = iter(float(t) for t in range(10_000))

    def source() -> dict[str, Any]:
        count = next(counts)
        if count is None:
            raise RuntimeError("a broken snapshot")
        return stats_of(count)

    with caplog.at_level(logging.ERROR, logger="iogate.gateway"):
        task = asyncio.create_task(history.run(source, lambda: next(clock), interval=0.001))
        assert await poll(lambda: len(history.samples()) >= 6, timeout=5.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    counts_seen = [s["databases"]["main"]["count"] for s in history.samples()]
    assert counts_seen[:5] == [1, 2, 4, 5, 6]
    assert "sampling failed" in caplog.text


# -- the endpoint ----------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    config = f"""
[[gateway.api_keys]]
name = "ops"
key = "{OBSERVER}"
scopes = ["observe"]

[[gateway.api_keys]]
name = "app"
key = "{CLIENT}"
scopes = ["db:main:read"]

[databases.main]
type = "sqlite"
path = "{tmp_path / "d.db"}"
"""
    app = create_app(parse_settings(config, env={}))
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client


def test_the_history_needs_observe(client: TestClient) -> None:
    assert client.get("/dashboard/history").status_code == 401
    refused = client.get("/dashboard/history", headers={"Authorization": f"Bearer {CLIENT}"})
    assert refused.status_code == 403
    assert "observe" in refused.json()["detail"]
    allowed = client.get("/dashboard/history", headers={"Authorization": f"Bearer {OBSERVER}"})
    assert allowed.status_code == 200
    body = allowed.json()
    assert body["capacity"] == HISTORY_SAMPLES
    assert body["interval_s"] > 0
    assert body["samples"], body  # the lifespan took its first sample at start-up
    assert "main" in body["samples"][-1]["databases"]


# -- a real gateway and a page opened cold -------------------------------------------------


async def load(base: str, seconds: float) -> int:
    """Bounded traffic for ``seconds``: SQLite reads and a few failing statements."""
    sent = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as http:
        while time.monotonic() < deadline and sent < 5_000:
            query = "SELECT ? AS n" if sent % 10 else "SELEC broken"
            await http.post(
                "/database/execute", json={"db_name": "main", "query": query, "params": [sent]}
            )
            sent += 1
    return sent


@pytest.mark.timeout(600)  # the first run may install chromium
async def test_a_page_opened_after_the_traffic_draws_the_last_minutes(
    chromium: str, tmp_path: Path
) -> None:
    config = f'[databases.main]\ntype = "sqlite"\npath = "{tmp_path / "main.db"}"\n'
    async with serve_gateway(config, tmp_path) as base:
        sent = await load(base, 4.0)
        assert sent > 50
        await asyncio.sleep(1.5)  # the traffic is over before the page opens
        async with httpx.AsyncClient(base_url=base) as http:
            history = (await http.get("/dashboard/history")).json()
        samples = history["samples"]
        assert len(samples) >= 4, samples
        uptimes = [s["uptime_s"] for s in samples]
        assert uptimes == sorted(uptimes)
        counts = [s["databases"]["main"]["count"] for s in samples]
        assert counts == sorted(counts)
        assert counts[-1] >= sent

        # Live polling once a minute: whatever the charts hold comes from the history.
        dom = await run_chromium(
            chromium,
            tmp_path / "profile",
            "--virtual-time-budget=3000",
            "--dump-dom",
            f"{base}/dashboard?interval=60000",
        )
    parsed = Charts()
    parsed.feed(dom)
    assert int(parsed.body.get("data-history", "0")) >= 4, parsed.body
    assert int(parsed.body.get("data-samples", "0")) <= 1, parsed.body
    assert parsed.body.get("data-errors") == "0"
    points, largest = parsed.charts["main"]["throughput"]
    assert points >= 3, parsed.charts
    assert largest > 0, parsed.charts
    points, largest = parsed.charts["main"]["latency"]
    assert points >= 3
    assert largest > 0
