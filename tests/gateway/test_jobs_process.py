"""Durable jobs in a real ``iogate serve`` with the embedded default (SQLite
store, no broker): a job survives a SIGKILL of the gateway mid-way."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway.test_reload import Served, serve  # noqa: F401 (the fixture)

TOTAL = 240


def config(tmp_path: Path) -> str:
    return (
        f'[jobs]\nstore = "sqlite:///{tmp_path / "jobs.db"}"\nchunk_size = 20\n'
        f'worker_chunks = 1\n\n[databases.lite]\ntype = "sqlite"\npath = "{tmp_path / "t.db"}"\n'
    )


def operations() -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for i in range(TOTAL):
        if i % 2:
            ops.append(
                {
                    "type": "database",
                    "db_name": "lite",
                    # some 20 ms of work: the job takes a few seconds
                    "query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                    "WHERE x < 60000) SELECT count(*) AS n FROM c",
                }
            )
        else:
            ops.append(
                {
                    "type": "database",
                    "db_name": "lite",
                    "query": "INSERT INTO items (v) VALUES (?)",
                    "params": [i],
                }
            )
    return ops


def status(served: Served, job_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{served.base}/batch/jobs/{job_id}?limit=0", timeout=30)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


@pytest.mark.timeout(300)
def test_a_job_resumes_after_the_gateway_is_killed(
    tmp_path: Path,
    serve: Callable[..., Served],  # noqa: F811
) -> None:
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER UNIQUE)")
    first = serve(config(tmp_path))
    reply = httpx.post(f"{first.base}/batch/jobs", json={"operations": operations()}, timeout=30)
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    deadline = time.monotonic() + 60
    while status(first, job_id)["done"] < 40:
        assert time.monotonic() < deadline, first.output()
        time.sleep(0.05)  # polling another process
    first.signal(signal.SIGKILL)
    first.process.wait(timeout=30)

    second = serve(config(tmp_path))
    deadline = time.monotonic() + 120
    while (body := status(second, job_id))["status"] != "done":
        assert time.monotonic() < deadline, second.output()
        time.sleep(0.1)  # polling another process
    assert body["done"] == TOTAL
    assert "unfinished job chunk(s)" in second.output()
    lines = httpx.get(
        f"{second.base}/batch/jobs/{job_id}",
        headers={"Accept": "application/x-ndjson"},
        timeout=30,
    ).content.splitlines()
    results = [orjson.loads(line) for line in lines]
    assert [r["index"] for r in results] == list(range(TOTAL))  # each index exactly once
    with sqlite3.connect(tmp_path / "t.db") as db:
        (rows,) = db.execute("SELECT count(*) FROM items").fetchone()
    assert rows == TOTAL // 2  # every insert applied once: none lost, none twice
    # An insert that had committed when the gateway died, but whose result was
    # not stored yet, ran again and met the unique key: at most one chunk's worth.
    replayed = [r for r in results if not r["success"]]
    assert len(replayed) <= 20
    assert all(r["error_type"] == "query_error" for r in replayed)
