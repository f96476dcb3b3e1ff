"""The chunk runner against a real SQLite job store and database: a chunk
taken too often without finishing fails its remaining operations instead of
going round for ever (a poison chunk)."""

from __future__ import annotations

from pathlib import Path

from iogate import AsyncOperationOrchestrator
from iogate.jobs.dispatch import InProcessDispatcher
from iogate.jobs.model import ChunkTask
from iogate.jobs.runner import MAX_CHUNK_ATTEMPTS, ChunkRunner
from iogate.jobs.service import JobService
from iogate.jobs.store import SQLJobStore


async def test_a_chunk_taken_too_often_fails_what_is_left(tmp_path: Path) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_database_manager("lite", "sqlite", str(tmp_path / "t.db"))
        store = SQLJobStore.from_url(f"sqlite:///{tmp_path / 'jobs.db'}")
        service = JobService(
            orchestrator, store, InProcessDispatcher(), run_chunks=False, chunk_size=3
        )
        await service.open()
        try:
            ops = [{"type": "database", "db_name": "lite", "query": "SELECT 1 AS one"}] * 6
            job = await service.submit(ops)
            # Runs that died without finishing chunk 0, each counted.
            counts = [await store.start_chunk(job.job_id, 0) for _ in range(MAX_CHUNK_ATTEMPTS)]
            assert counts == list(range(1, MAX_CHUNK_ATTEMPTS + 1))
            runner = ChunkRunner(store, orchestrator)
            await runner.run(ChunkTask(job_id=job.job_id, chunk=0))  # the sixth: given up
            await runner.run(ChunkTask(job_id=job.job_id, chunk=1))  # a healthy chunk
            progress = await job.progress()
            assert (progress.status, progress.done, progress.failed) == ("done", 6, 3)
            results = [r async for r in job.results()]
            assert [r.success for r in results] == [False] * 3 + [True] * 3
            assert results[0].result["error_type"] == "internal_error"
            assert "taken 5 times without finishing" in results[0].result["error"]
        finally:
            await service.aclose()


async def test_a_store_made_before_attempts_were_counted_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the chunks table as development builds made it
        db.execute(
            "CREATE TABLE iogate_job_chunks (job_id TEXT NOT NULL, chunk INTEGER NOT NULL, "
            "start_idx BIGINT NOT NULL, end_idx BIGINT NOT NULL, operations TEXT NOT NULL, "
            "finished BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (job_id, chunk))"
        )
    async with SQLJobStore.from_url(f"sqlite:///{path}"):
        pass
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(iogate_job_chunks)")]
    assert "attempts" in columns
