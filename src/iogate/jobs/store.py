"""The SQL job store: jobs, their chunks and every operation's result.

One store serves SQLite (``sqlite:///PATH``, embedded: the gateway runs the
chunks itself) and PostgreSQL (``postgresql://...``, shared by gateways and
``iogate worker`` processes on several machines), through iogate's own
managers, created here and registered nowhere. Three tables::

    iogate_jobs         one row per job, with its counters (done, failed,
                        chunks_done): progress reads one row, never counts
    iogate_job_chunks   (job_id, chunk): the chunk's index range and its
                        operations as one JSON text, and a finished flag
    iogate_job_results  (job_id, idx): each operation's Result as JSON text

Writes that belong together are one transaction: ``create`` (the job and
all its chunks), ``store_results`` (the new results and the counters, moved
by the number of rows actually inserted: an index already stored is kept
as it was and not counted again), ``finish_chunk`` (the chunk's flag, the
job's ``chunks_done``, and DONE when it was the last). On PostgreSQL the
job row's lock orders concurrent finishers: the second one's UPDATE is
re-evaluated on the first one's committed row, so exactly one sees the
last chunk. SQLite has one writer, which orders them anyway.

The schema is created on open when missing (PostgreSQL: under a
transaction-scoped advisory lock, so two processes opening a new database
at once do not race on its catalog). Every failure reaches the caller as
:class:`~iogate.jobs.model.JobError` with the manager's error as its cause;
every call is bounded (acquire timeout, statement timeout).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from iogate.backends.base import AsyncDatabaseManager, Transaction
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError, IogateError, error_for
from iogate.core.redact import redact_url
from iogate.core.result import Result
from iogate.jobs import sql
from iogate.jobs.interfaces import JobStore
from iogate.jobs.model import (
    ChunkTask,
    JobError,
    JobNotFoundError,
    JobProgress,
    JobStatus,
    NewJob,
    StoredResult,
)

__all__ = [
    "DEFAULT_STORE_ACQUIRE_TIMEOUT",
    "DEFAULT_STORE_STATEMENT_TIMEOUT",
    "ChunkRecord",
    "JobRecord",
    "SQLJobStore",
]

DEFAULT_STORE_ACQUIRE_TIMEOUT = 5.0
DEFAULT_STORE_STATEMENT_TIMEOUT = 30.0
# How long past the statement timeout a single call still waits for its answer.
_MARGIN = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """A job as stored (satisfies :class:`~iogate.jobs.interfaces.StoredJob`)."""

    job_id: str
    status: JobStatus
    total: int
    concurrency: int
    max_rows: int | None
    guards: dict[str, str] = field(default_factory=dict)
    submitted_by: str | None = None
    created_at: float
    cancelled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRecord:
    """One stored chunk (satisfies :class:`~iogate.jobs.interfaces.StoredChunk`).

    ``operations`` are those of indexes [start, end) of the job.
    """

    job_id: str
    chunk: int
    start: int
    end: int
    operations: list[Any]
    finished: bool


class _Tx:
    """A transaction whose failed statement raises JobError (rolling it back)."""

    def __init__(self, tx: Transaction, store: SQLJobStore, what: str) -> None:
        self._tx = tx
        self._store = store
        self._what = what

    async def execute(self, query: str, params: Any = None) -> Result:
        result = await self._tx.execute_query(query, params)
        if not result.success:
            raise self._store._failed(self._what, result)
        return result


# -- the store ------------------------------------------------------------------------


class SQLJobStore:
    """:class:`~iogate.jobs.interfaces.JobStore` on SQLite or PostgreSQL.

    Build it with :meth:`from_url`; ``open()`` connects and creates the
    schema, ``aclose()`` (idempotent) closes the manager it owns. A closed
    store cannot be reopened.
    """

    def __init__(
        self,
        manager: AsyncDatabaseManager,
        *,
        target: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if manager.backend == "postgresql":
            self._dialect: sql.Dialect = sql.PostgresDialect()
        elif manager.backend == "sqlite":
            self._dialect = sql.SQLiteDialect()
        else:
            raise ConfigError(f"job store: {manager.backend} is not a SQL job store backend")
        self._manager = manager
        self._target = target
        self._clock = clock
        options: DatabaseOptions | None = getattr(manager, "options", None)
        statement = options.statement_timeout if options else None
        acquire = options.acquire_timeout if options else DEFAULT_STORE_ACQUIRE_TIMEOUT
        self._call_budget = acquire + (statement or DEFAULT_STORE_STATEMENT_TIMEOUT) + _MARGIN
        self._opened = False
        self._closed = False
        self._open_lock = asyncio.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        acquire_timeout: float = DEFAULT_STORE_ACQUIRE_TIMEOUT,
        statement_timeout: float = DEFAULT_STORE_STATEMENT_TIMEOUT,
        max_connections: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SQLJobStore:
        """A store on ``sqlite:///PATH`` (``sqlite:////abs/path`` for an
        absolute one) or ``postgresql://...``; not connected until ``open()``."""
        options = DatabaseOptions(
            acquire_timeout=acquire_timeout,
            statement_timeout=statement_timeout,
            busy_timeout=acquire_timeout,
            min_connections=1,
            max_connections=max_connections or 10,
        )
        manager: AsyncDatabaseManager
        if url.startswith("sqlite:///"):
            from iogate.backends.sqlite import AsyncSQLiteManager

            path = url.removeprefix("sqlite:///")
            if not path:
                raise ConfigError("job store: sqlite:///PATH needs a path")
            manager = AsyncSQLiteManager(
                path, max_connections or 4, name="iogate-jobs", options=options
            )
        elif url.startswith(("postgresql://", "postgres://")):
            from iogate.backends.postgres import AsyncPostgreSQLManager

            manager = AsyncPostgreSQLManager(url, name="iogate-jobs", options=options)
        else:
            raise ConfigError(
                f"job store: {redact_url(url)!r} is neither sqlite:///PATH nor postgresql://..."
            )
        target = url if url.startswith("sqlite:") else redact_url(url)
        return cls(manager, target=target, clock=clock)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._opened else "unopened"
        return f"<SQLJobStore {self._target} {state}>"

    # -- lifecycle ----------------------------------------------------------------

    async def open(self) -> None:
        """Connect and create the schema if missing; idempotent."""
        async with self._open_lock:
            if self._closed:
                raise JobError(f"job store {self._target}: closed, cannot be reopened")
            if self._opened:
                return
            # A failure leaves the store unopened: open() may be tried again.
            try:
                await self._open_manager(Deadline(self._call_budget))
            except TimeoutError as exc:  # the pool's own bound did not answer first
                raise JobError(f"job store {self._target}: no answer when opening") from exc
            except IogateError as exc:
                raise JobError(f"job store {self._target}: cannot open: {exc}") from exc
            await self._create_schema()
            self._opened = True

    async def _open_manager(self, deadline: Deadline) -> None:
        async with asyncio.timeout(deadline.remaining()):
            await self._manager.initialize_pool()

    async def _create_schema(self) -> None:
        check = await self._query("check the schema", self._dialect.schema_check, opening=True)
        if check.data and check.data[0]["present"]:
            return
        async with self._transaction("create the schema", opening=True) as tx:
            if self._dialect.schema_lock is not None:
                await tx.execute(self._dialect.schema_lock)
            for statement in sql.SCHEMA:
                await tx.execute(statement)
            # A store created before chunks counted their runs (no release had it
            # without; kept for stores made by development builds).
            check = await tx.execute(self._dialect.schema_check)
            if not (check.data and check.data[0]["present"]):
                await tx.execute(sql.ADD_ATTEMPTS)

    async def aclose(self) -> None:
        """Close the store and its manager; idempotent."""
        self._closed = True
        self._opened = False
        await self._manager.close()

    async def __aenter__(self) -> SQLJobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- writes -------------------------------------------------------------------

    async def create(self, job: NewJob) -> None:
        """Write the job and all its chunks in one transaction."""
        what = f"create job {job.job_id}"
        rows = []
        expected = 0
        for number, (start, end) in enumerate(job.chunks):
            if start != expected or end < start or end > job.total:
                raise JobError(f"job store: {what}: chunk {number} ({start}, {end}) out of place")
            expected = end
            try:
                operations = orjson.dumps(list(job.operations[start:end])).decode()
            except orjson.JSONEncodeError as exc:
                raise JobError(f"job store: {what}: operations are not JSON: {exc}") from exc
            rows.append((number, start, end, operations))
        if expected != job.total:
            raise JobError(f"job store: {what}: chunks cover {expected} of {job.total} operations")
        now = self._clock()
        status = JobStatus.QUEUED if rows else JobStatus.DONE
        params = [
            job.job_id,
            status.value,
            job.total,
            len(rows),
            job.concurrency,
            job.max_rows,
            orjson.dumps(dict(job.guards)).decode(),
            job.submitted_by,
            now,
            None if rows else now,
        ]
        async with self._transaction(what) as tx:
            await tx.execute(sql.INSERT_JOB, params)
            await self._dialect.insert_chunks(tx, job.job_id, rows)

    async def store_results(self, job_id: str, results: Sequence[StoredResult]) -> int:
        """Insert the results not stored yet and count them; returns how many."""
        what = f"store results of job {job_id}"
        first: dict[int, tuple[int, bool, str]] = {}
        for stored in results:
            if stored.index not in first:
                first[stored.index] = (stored.index, *sql.result_row(stored.result, stored.success))
        if not first:
            return 0
        # Index order: concurrent writers of the same indexes lock them in the
        # same order, so they wait for each other instead of deadlocking.
        rows = [first[index] for index in sorted(first)]
        async with self._transaction(what) as tx:
            new, failed = await self._dialect.insert_results(tx, job_id, rows)
            counted = await tx.execute(sql.COUNT_RESULTS, [job_id, new, failed])
            if not counted.rows_affected:
                raise JobNotFoundError(f"job store: no job {job_id}")
        return new

    async def finish_chunk(self, job_id: str, chunk: int) -> None:
        """Mark the chunk finished; the last one sets the job DONE (once)."""
        async with self._transaction(f"finish chunk {chunk} of job {job_id}") as tx:
            marked = await tx.execute(sql.FINISH_CHUNK, [job_id, chunk])
            if marked.rows_affected:
                await tx.execute(sql.COUNT_CHUNK, [job_id, self._clock()])

    async def start_chunk(self, job_id: str, chunk: int) -> int:
        """Count one more run of the chunk and return the count; the job is
        RUNNING from its first started chunk on (started_at set once)."""
        what = f"start chunk {chunk} of job {job_id}"
        async with self._transaction(what) as tx:
            counted = await tx.execute(sql.ATTEMPT, [job_id, chunk])
            await tx.execute(sql.START, [job_id, self._clock()])
        rows = counted.data or []
        return int(rows[0]["attempts"]) if rows else 0

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when unknown or already finished."""
        result = await self._query(f"cancel job {job_id}", sql.CANCEL, [job_id, self._clock()])
        return bool(result.rows_affected)

    async def delete(self, job_id: str) -> bool:
        """Remove a job, its chunks and results (retention, tests); False when unknown."""
        async with self._transaction(f"delete job {job_id}") as tx:
            for statement in sql.DELETE:
                result = await tx.execute(statement, [job_id])
        return bool(result.rows_affected)

    # -- reads --------------------------------------------------------------------

    async def job(self, job_id: str) -> JobRecord | None:
        rows = (await self._query(f"read job {job_id}", sql.SELECT_JOB, [job_id])).data
        if not rows:
            return None
        row = rows[0]
        with self._decoding(f"read job {job_id}"):
            return JobRecord(
                job_id=row["id"],
                status=JobStatus(row["status"]),
                total=row["total"],
                concurrency=row["concurrency"],
                max_rows=row["max_rows"],
                guards=orjson.loads(row["guards"]),
                submitted_by=row["submitted_by"],
                created_at=row["created_at"],
                cancelled=bool(row["cancelled"]),
            )

    async def chunk(self, job_id: str, chunk: int) -> ChunkRecord | None:
        what = f"read chunk {chunk} of job {job_id}"
        rows = (await self._query(what, sql.SELECT_CHUNK, [job_id, chunk])).data
        if not rows:
            return None
        row = rows[0]
        with self._decoding(what):
            return ChunkRecord(
                job_id=job_id,
                chunk=chunk,
                start=row["start_idx"],
                end=row["end_idx"],
                operations=orjson.loads(row["operations"]),
                finished=bool(row["finished"]),
            )

    async def results_in(self, job_id: str, start: int, end: int) -> dict[int, StoredResult]:
        what = f"read results of job {job_id}"
        rows = (await self._query(what, sql.SELECT_RESULTS_IN, [job_id, start, end])).data
        return {stored.index: stored for stored in self._results(what, rows)}

    async def results_page(
        self, job_id: str, *, after: int = -1, limit: int = 100
    ) -> list[StoredResult]:
        if limit <= 0:
            return []
        what = f"read results of job {job_id}"
        rows = (await self._query(what, sql.SELECT_RESULTS_PAGE, [job_id, after, limit])).data
        return self._results(what, rows)

    async def progress(self, job_id: str) -> JobProgress | None:
        what = f"read progress of job {job_id}"
        rows = (await self._query(what, sql.SELECT_PROGRESS, [job_id])).data
        if not rows:
            return None
        row = rows[0]
        with self._decoding(what):
            return JobProgress(
                job_id=job_id,
                status=JobStatus(row["status"]),
                total=row["total"],
                done=row["done"],
                failed=row["failed"],
                chunks=row["chunks"],
                chunks_done=row["chunks_done"],
                created_at=row["created_at"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
            )

    async def unfinished(self) -> list[ChunkTask]:
        rows = (await self._query("list unfinished chunks", sql.UNFINISHED)).data or []
        return [ChunkTask(job_id=row["job_id"], chunk=row["chunk"]) for row in rows]

    # -- plumbing -----------------------------------------------------------------

    def _results(self, what: str, rows: list[dict[str, Any]] | None) -> list[StoredResult]:
        with self._decoding(what):
            return [
                StoredResult(
                    index=row["idx"],
                    success=bool(row["success"]),
                    result=orjson.loads(row["result"]),
                )
                for row in rows or ()
            ]

    def _manager_open(self, opening: bool) -> AsyncDatabaseManager:
        if self._closed:
            raise JobError(f"job store {self._target}: closed")
        if not self._opened and not opening:
            raise JobError(f"job store {self._target}: not open (call open() first)")
        return self._manager

    async def _query(
        self, what: str, query: str, params: Any = None, *, opening: bool = False
    ) -> Result:
        """One statement, bounded by acquire + statement timeout; raises JobError."""
        manager = self._manager_open(opening)
        result = await manager.execute_query(query, params, deadline=Deadline(self._call_budget))
        if not result.success:
            raise self._failed(what, result)
        return result

    @asynccontextmanager
    async def _transaction(self, what: str, *, opening: bool = False) -> AsyncIterator[_Tx]:
        """One transaction; each step is bounded by the manager's timeouts."""
        manager = self._manager_open(opening)
        try:
            async with manager.transaction() as tx:
                yield _Tx(tx, self, what)
        except (JobError, JobNotFoundError):
            raise
        except IogateError as exc:
            raise JobError(f"job store {self._target}: {what}: {exc}") from exc

    def _failed(self, what: str, result: Result) -> JobError:
        message = result.error or result.error_type or "failed"
        error = JobError(f"job store {self._target}: {what}: {message}")
        error.__cause__ = error_for(result.error_type, message)
        return error

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        """A record that cannot be read back (not JSON, unknown status) is a JobError."""
        try:
            yield
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
            raise JobError(f"job store {self._target}: {what}: bad record: {exc}") from exc


def _as_job_store(store: SQLJobStore) -> JobStore:
    """mypy checks here that SQLJobStore implements the JobStore protocol."""
    return store
