"""The SQL job store against real SQLite files and the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from iogate.jobs.model import (
    ChunkTask,
    JobError,
    JobNotFoundError,
    JobStatus,
    NewJob,
    StoredResult,
    new_job_id,
)
from iogate.jobs.store import SQLJobStore
from tests.fakes import WALL_EPOCH, FakeClock

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Jobs:
    """Makes jobs on a store and deletes them afterwards (the database is shared)."""

    def __init__(self, store: SQLJobStore) -> None:
        self.store = store
        self.ids: list[str] = []

    async def create(self, operations: list[Any], chunk_size: int = 250, **fields: Any) -> NewJob:
        chunks = [
            (start, min(start + chunk_size, len(operations)))
            for start in range(0, len(operations), chunk_size)
        ]
        job = NewJob(job_id=new_job_id(), operations=operations, chunks=chunks, **fields)
        self.ids.append(job.job_id)
        await self.store.create(job)
        return job


def operations(count: int) -> list[dict[str, Any]]:
    return [
        {"type": "database", "db_name": "main", "query": "SELECT $1", "params": [index]}
        for index in range(count)
    ]


def result(index: int, success: bool = True, **extra: Any) -> StoredResult:
    body = {"success": success, "data": [{"n": index}], "error": None if success else "boom"}
    return StoredResult(index=index, success=success, result={**body, **extra})


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(WALL_EPOCH)


@pytest.fixture
async def store(store_url: str, clock: FakeClock) -> AsyncIterator[SQLJobStore]:
    job_store = SQLJobStore.from_url(
        store_url, acquire_timeout=5, statement_timeout=10, clock=clock
    )
    await job_store.open()
    try:
        yield job_store
    finally:
        await job_store.aclose()


@pytest.fixture
async def jobs(store: SQLJobStore) -> AsyncIterator[Jobs]:
    made = Jobs(store)
    try:
        yield made
    finally:
        for job_id in made.ids:
            await store.delete(job_id)


async def test_create_and_read_back_chunks(store: SQLJobStore, jobs: Jobs) -> None:
    ops: list[Any] = operations(1000)
    ops[3] = {"type": "api", "data": {"name": "Zoë 東京 🚀", "nested": {"a": [1, {"b": None}]}}}
    ops[999] = {"deep": [[[["x"]]]], "float": 1.5, "big": 2**53, "quote": 'it\'s "q" \\'}
    job = await jobs.create(
        ops,
        concurrency=7,
        max_rows=50,
        guards={"main": "read", "other": "trusted"},
        submitted_by="ci",
    )

    stored = await store.job(job.job_id)
    assert stored is not None
    assert (stored.job_id, stored.concurrency, stored.max_rows) == (job.job_id, 7, 50)
    assert stored.guards == {"main": "read", "other": "trusted"}
    assert (stored.submitted_by, stored.total, stored.cancelled) == ("ci", 1000, False)
    assert stored.status is JobStatus.QUEUED

    read = []
    for number in range(4):
        chunk = await store.chunk(job.job_id, number)
        assert chunk is not None
        assert (chunk.start, chunk.end, chunk.finished) == (number * 250, number * 250 + 250, False)
        read.extend(chunk.operations)
    assert read == ops
    assert await store.chunk(job.job_id, 4) is None
    assert await store.job(new_job_id()) is None
    assert await store.progress(new_job_id()) is None

    progress = await store.progress(job.job_id)
    assert progress is not None
    assert (progress.status, progress.total, progress.done, progress.chunks) == (
        JobStatus.QUEUED,
        1000,
        0,
        4,
    )
    assert progress.started_at is None
    assert progress.finished_at is None


async def test_create_is_all_or_nothing(store: SQLJobStore, jobs: Jobs) -> None:
    job = await jobs.create(operations(10), chunk_size=5)
    with pytest.raises(JobError, match="create job"):
        await store.create(job)  # the same id again: refused, nothing half-written
    assert (await store.progress(job.job_id)).chunks == 2  # type: ignore[union-attr]

    with pytest.raises(JobError, match="not JSON"):
        await store.create(NewJob(job_id=new_job_id(), operations=[object()], chunks=[(0, 1)]))
    with pytest.raises(JobError, match="cover"):
        await store.create(NewJob(job_id=new_job_id(), operations=[1, 2], chunks=[(0, 1)]))


async def test_empty_job_is_done_at_once(store: SQLJobStore, jobs: Jobs) -> None:
    job = await jobs.create([])
    progress = await store.progress(job.job_id)
    assert progress is not None
    assert progress.status is JobStatus.DONE
    assert progress.finished_at is not None
    assert job.job_id not in {task.job_id for task in await store.unfinished()}


async def test_store_results_keeps_the_first_and_counts_new(store: SQLJobStore, jobs: Jobs) -> None:
    job = await jobs.create(operations(10))
    assert await store.store_results(job.job_id, [result(0, first=True)]) == 1
    assert await store.store_results(job.job_id, [result(0, success=False, first=False)]) == 0
    kept = await store.results_in(job.job_id, 0, 10)
    assert list(kept) == [0]
    assert kept[0].success is True
    assert kept[0].result["first"] is True

    # Mixed: 0 is old, 1-4 new (2 and 4 failed), 3 twice in one call.
    batch = [result(0), result(1), result(2, False), result(3), result(3, False), result(4, False)]
    assert await store.store_results(job.job_id, batch) == 4
    assert await store.store_results(job.job_id, []) == 0
    progress = await store.progress(job.job_id)
    assert progress is not None
    assert (progress.done, progress.failed) == (5, 2)
    assert (await store.results_in(job.job_id, 3, 4))[3].success is True
    assert sorted(await store.results_in(job.job_id, 2, 5)) == [2, 3, 4]


async def test_store_results_of_an_unknown_job_writes_nothing(store: SQLJobStore) -> None:
    job_id = new_job_id()
    with pytest.raises(JobNotFoundError):
        await store.store_results(job_id, [result(0)])
    assert await store.results_in(job_id, 0, 10) == {}


async def test_concurrent_store_results_count_each_index_once(
    store: SQLJobStore, jobs: Jobs
) -> None:
    job = await jobs.create(operations(300))
    batch = [result(index, success=index % 3 != 0) for index in range(300)]
    counts = await asyncio.gather(
        *(store.store_results(job.job_id, batch[offset:] + batch[:offset]) for offset in range(6))
    )
    assert sum(counts) == 300
    progress = await store.progress(job.job_id)
    assert progress is not None
    assert (progress.done, progress.failed, progress.pending) == (300, 100, 0)
    assert len(await store.results_in(job.job_id, 0, 300)) == 300


async def test_finishing_every_chunk_at_once_sets_done_once(
    store: SQLJobStore, jobs: Jobs, clock: FakeClock
) -> None:
    job = await jobs.create(operations(200), chunk_size=10)
    await store.start_chunk(job.job_id, 0)
    # Every chunk twice, all at once: each counts once, the last sets DONE.
    await asyncio.gather(*(store.finish_chunk(job.job_id, number % 20) for number in range(40)))
    progress = await store.progress(job.job_id)
    assert progress is not None
    assert (progress.status, progress.chunks, progress.chunks_done) == (JobStatus.DONE, 20, 20)
    assert progress.finished_at == clock.now

    clock.now += 100
    await store.finish_chunk(job.job_id, 3)  # a redelivered chunk finishing again
    again = await store.progress(job.job_id)
    assert again is not None
    assert (again.chunks_done, again.finished_at) == (
        20,
        progress.finished_at,
    )
    for number in range(20):
        chunk = await store.chunk(job.job_id, number)
        assert chunk is not None
        assert chunk.finished


async def test_last_chunk_finishing_sets_done_and_times(
    store: SQLJobStore, jobs: Jobs, clock: FakeClock
) -> None:
    job = await jobs.create(operations(20), chunk_size=10)
    await store.start_chunk(job.job_id, 0)
    started = clock.now
    clock.now += 5
    await store.start_chunk(job.job_id, 1)  # started_at is set once
    await store.finish_chunk(job.job_id, 0)
    middle = await store.progress(job.job_id)
    assert middle is not None
    assert (middle.status, middle.chunks_done, middle.started_at) == (JobStatus.RUNNING, 1, started)
    assert middle.finished_at is None
    clock.now += 5
    await store.finish_chunk(job.job_id, 1)
    done = await store.progress(job.job_id)
    assert done is not None
    assert done.status is JobStatus.DONE
    assert done.finished
    assert (done.started_at, done.finished_at) == (started, clock.now)
    await store.finish_chunk(new_job_id(), 0)  # unknown: nothing happens
    await store.start_chunk(new_job_id(), 0)


async def test_cancel(store: SQLJobStore, jobs: Jobs, clock: FakeClock) -> None:
    queued = await jobs.create(operations(20), chunk_size=10)
    assert await store.cancel(queued.job_id) is True
    assert await store.cancel(queued.job_id) is False  # already finished
    stored = await store.job(queued.job_id)
    assert stored is not None
    assert stored.cancelled
    assert stored.status is JobStatus.CANCELLED
    progress = await store.progress(queued.job_id)
    assert progress is not None
    assert progress.finished_at == clock.now
    # Chunks still finishing after the cancel do not turn it into DONE.
    await store.finish_chunk(queued.job_id, 0)
    await store.finish_chunk(queued.job_id, 1)
    after = await store.progress(queued.job_id)
    assert after is not None
    assert after.status is JobStatus.CANCELLED

    running = await jobs.create(operations(20), chunk_size=10)
    await store.start_chunk(running.job_id, 0)
    assert await store.cancel(running.job_id) is True

    done = await jobs.create(operations(5))
    await store.finish_chunk(done.job_id, 0)
    assert await store.cancel(done.job_id) is False
    assert (await store.progress(done.job_id)).status is JobStatus.DONE  # type: ignore[union-attr]
    assert await store.cancel(new_job_id()) is False


async def test_unfinished_after_a_crash(store_url: str, clock: FakeClock) -> None:
    first = SQLJobStore.from_url(store_url, acquire_timeout=5, clock=clock)
    await first.open()
    made = Jobs(first)
    try:
        half = await made.create(operations(40), chunk_size=10)
        await first.start_chunk(half.job_id, 0)
        await first.store_results(half.job_id, [result(0), result(1)])
        await first.finish_chunk(half.job_id, 1)
        clock.now += 1  # resumed oldest first
        untouched = await made.create(operations(15), chunk_size=10)
        cancelled = await made.create(operations(10), chunk_size=5)
        await first.cancel(cancelled.job_id)
        done = await made.create(operations(5))
        await first.finish_chunk(done.job_id, 0)
        # The process dies: nothing is finished in memory, only the store knows.
        await first.aclose()

        async with SQLJobStore.from_url(store_url, acquire_timeout=5) as second:
            mine = {half.job_id, untouched.job_id, cancelled.job_id, done.job_id}
            found = [task for task in await second.unfinished() if task.job_id in mine]
            expected = [
                *(ChunkTask(job_id=half.job_id, chunk=n) for n in (0, 2, 3)),
                *(ChunkTask(job_id=untouched.job_id, chunk=n) for n in (0, 1)),
            ]
            assert found == expected
            partial = await second.results_in(half.job_id, 0, 10)
            assert sorted(partial) == [0, 1]
            for job_id in mine:
                assert await second.delete(job_id) is True
            assert await second.delete(half.job_id) is False
    finally:
        await first.aclose()


async def test_results_page(store: SQLJobStore, jobs: Jobs) -> None:
    job = await jobs.create(operations(1000))
    indexes = list(range(1000))
    for start in range(0, 1000, 250):  # stored out of order, as concurrent chunks do
        await store.store_results(
            job.job_id, [result(i) for i in reversed(indexes[start : start + 250])]
        )
    seen: list[int] = []
    after = -1
    for _ in range(10):
        page = await store.results_page(job.job_id, after=after, limit=300)
        if not page:
            break
        seen.extend(stored.index for stored in page)
        after = page[-1].index
    assert seen == indexes
    assert [r.index for r in await store.results_page(job.job_id, after=997)] == [998, 999]
    assert await store.results_page(job.job_id, limit=0) == []
    assert (await store.results_page(job.job_id, after=41, limit=1))[0].result["data"] == [
        {"n": 42}
    ]


async def test_large_create_is_fast(store: SQLJobStore, jobs: Jobs) -> None:
    started = time.perf_counter()
    job = await jobs.create(operations(100_000), chunk_size=250)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"creating a 100,000-operation job took {elapsed:.1f}s"
    progress = await store.progress(job.job_id)
    assert progress is not None
    assert (progress.total, progress.chunks) == (100_000, 400)
    last = await store.chunk(job.job_id, 399)
    assert last is not None
    assert last.operations[-1]["params"] == [99_999]
    assert len(await store.unfinished()) >= 400


async def test_lifecycle_errors(store_url: str) -> None:
    job_store = SQLJobStore.from_url(store_url)
    with pytest.raises(JobError, match="not open"):
        await job_store.progress(new_job_id())
    await job_store.open()
    await job_store.open()  # idempotent
    await job_store.aclose()
    await job_store.aclose()
    with pytest.raises(JobError, match="closed"):
        await job_store.progress(new_job_id())
    with pytest.raises(JobError, match="closed"):
        await job_store.open()


@pytest.mark.parametrize(
    "url", ["mysql://root@127.0.0.1/test", "sqlite:///", "redis://127.0.0.1:6379/0"]
)
def test_refuses_other_urls(url: str) -> None:
    from iogate.core.errors import ConfigError

    with pytest.raises(ConfigError):
        SQLJobStore.from_url(url)


async def test_two_processes_create_the_sqlite_schema_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    stores = [SQLJobStore.from_url(url) for _ in range(3)]
    try:
        await asyncio.gather(*(job_store.open() for job_store in stores))
        made = Jobs(stores[0])
        job = await made.create(operations(3))
        assert (await stores[2].job(job.job_id)) is not None
    finally:
        for job_store in stores:
            await job_store.aclose()


@pytest.mark.postgres
async def test_two_processes_create_the_postgres_schema_at_once(postgres_url: str) -> None:
    # A fresh schema, chosen through the URL (asyncpg passes unknown query
    # parameters on as server settings): the store's tables do not exist yet.
    schema = f"s_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    url = f"{postgres_url}?search_path={schema}"
    stores = [SQLJobStore.from_url(url) for _ in range(4)]
    try:
        await asyncio.gather(*(job_store.open() for job_store in stores))
        tables = await admin.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema
        )
        assert [row["tablename"] for row in tables] == [
            "iogate_job_chunks",
            "iogate_job_results",
            "iogate_jobs",
        ]
        job = await Jobs(stores[1]).create(operations(3))
        assert (await stores[3].progress(job.job_id)) is not None
    finally:
        for job_store in stores:
            await job_store.aclose()
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def _fails_within(open_store: Callable[[], Any], bound: float) -> JobError:
    started = time.perf_counter()
    with pytest.raises(JobError) as caught:
        await open_store()
    assert time.perf_counter() - started < bound
    return caught.value


async def test_unreachable_postgres_fails_with_job_error() -> None:
    job_store = SQLJobStore.from_url("postgresql://postgres@127.0.0.1:1/test", acquire_timeout=1)
    try:
        error = await _fails_within(job_store.open, 1.5)
        assert "127.0.0.1:1" in str(error)
        assert error.__cause__ is not None
        with pytest.raises(JobError, match="not open"):
            await job_store.job(new_job_id())
    finally:
        await job_store.aclose()


async def test_silent_postgres_fails_within_the_acquire_timeout() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    job_store = SQLJobStore.from_url(
        f"postgresql://postgres@127.0.0.1:{port}/test", acquire_timeout=0.5, statement_timeout=1
    )
    try:
        error = await _fails_within(job_store.open, 2.0)
        assert "0.5s" in str(error)
    finally:
        await job_store.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
