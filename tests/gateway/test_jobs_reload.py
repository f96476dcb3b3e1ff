"""A config reload builds a second app generation while the first drains: the
new generation's embedded runner resumes unfinished chunks only once the old
runner has stopped, so no operation runs twice because of the reload."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from iogate import AsyncOperationOrchestrator
from iogate.gateway.jobs_state import GatewayJobs
from iogate.gateway.settings import JobsSettings

TOTAL = 60


def slow_inserts() -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for i in range(TOTAL):
        ops.append(
            {
                "type": "database",
                "db_name": "lite",
                "query": "INSERT INTO items (v) SELECT ? FROM (WITH RECURSIVE c(x) AS (SELECT 1 "
                "UNION ALL SELECT x + 1 FROM c WHERE x < 150000) SELECT count(*) FROM c)",
                "params": [i],
            }
        )
    return ops


async def test_the_new_generation_waits_for_the_old_runner(tmp_path: Path) -> None:
    settings = JobsSettings(store=f"sqlite:///{tmp_path / 'jobs.db'}", chunk_size=10)
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_database_manager("lite", "sqlite", str(tmp_path / "t.db"))
        await orchestrator.execute_database_operation(
            "lite",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER)",  # runs, counted
        )
        old = GatewayJobs(settings, orchestrator, max_params=100)
        service = await old.service()
        job = await service.submit(slow_inserts(), concurrency=1)
        deadline = time.monotonic() + 30
        while (await job.progress()).done < 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)  # the old generation's runner is working
        new = GatewayJobs(settings, orchestrator, max_params=100)  # the reload
        waiting = await new.service()
        # Both generations alive while the old runner finishes five more operations.
        more = (await job.progress()).done + 5
        while (await job.progress()).done < more:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)  # polling the old generation's runner
        # The new runner took nothing while the old one was still running.
        assert getattr(waiting.dispatcher, "unfinished", None) == 0
        assert waiting.runner.chunks_run == 0
        await old.aclose()  # the old generation has drained
        try:
            progress = await (await new.service()).wait(job.job_id, timeout=60)
        finally:
            await new.aclose()
        assert progress.done == TOTAL
        rows = await orchestrator.execute_database_operation(
            "lite", "SELECT count(*) AS n, count(DISTINCT v) AS distinct_v FROM items"
        )
        (counted,) = rows.data
        assert counted["distinct_v"] == TOTAL
        # At most the insert in flight when the old runner stopped ran twice.
        assert counted["n"] - TOTAL <= 1
