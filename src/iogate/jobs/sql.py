"""The job store's SQL: the schema, every statement, and what differs per database.

Statements are written once in PostgreSQL's ``$n`` form (the SQLite manager
takes ``$n`` too); the two dialects differ only in how they insert many rows
at once and how they check that the schema exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import orjson

from iogate.core.result import Result
from iogate.jobs.model import (
    JobStatus,
)

__all__ = ["Dialect", "Executor", "PostgresDialect", "SQLiteDialect", "result_row"]

BATCH_ROWS = 500
BATCH_BYTES = 8 * 1024 * 1024
# Seconds between attempts to open a SQLite file another process is setting up.
# pg_advisory_xact_lock key taken while the schema is created: b"iogatejb".
SCHEMA_LOCK = 7597404764659608162
OPEN = f"('{JobStatus.QUEUED.value}', '{JobStatus.RUNNING.value}')"

# The same DDL serves both: SQLite reads BIGINT/DOUBLE PRECISION/BOOLEAN by
# affinity. The last statement's object is the one open() looks for.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS iogate_jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        total BIGINT NOT NULL,
        chunks INTEGER NOT NULL,
        chunks_done INTEGER NOT NULL DEFAULT 0,
        done BIGINT NOT NULL DEFAULT 0,
        failed BIGINT NOT NULL DEFAULT 0,
        concurrency INTEGER NOT NULL,
        max_rows INTEGER,
        guards TEXT NOT NULL,
        submitted_by TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        cancelled BOOLEAN NOT NULL DEFAULT FALSE)""",
    """CREATE TABLE IF NOT EXISTS iogate_job_chunks (
        job_id TEXT NOT NULL,
        chunk INTEGER NOT NULL,
        start_idx BIGINT NOT NULL,
        end_idx BIGINT NOT NULL,
        operations TEXT NOT NULL,
        finished BOOLEAN NOT NULL DEFAULT FALSE,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, chunk))""",
    """CREATE TABLE IF NOT EXISTS iogate_job_results (
        job_id TEXT NOT NULL,
        idx BIGINT NOT NULL,
        success BOOLEAN NOT NULL,
        result TEXT NOT NULL,
        PRIMARY KEY (job_id, idx))""",
    f"CREATE INDEX IF NOT EXISTS iogate_jobs_open ON iogate_jobs (created_at)"
    f" WHERE status IN {OPEN}",
)

INSERT_JOB = (
    "INSERT INTO iogate_jobs (id, status, total, chunks, concurrency, max_rows, guards,"
    " submitted_by, created_at, finished_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)
SELECT_JOB = (
    "SELECT id, status, total, concurrency, max_rows, guards, submitted_by, created_at,"
    " cancelled FROM iogate_jobs WHERE id = $1"
)
SELECT_PROGRESS = (
    "SELECT status, total, done, failed, chunks, chunks_done, created_at, started_at,"
    " finished_at FROM iogate_jobs WHERE id = $1"
)
SELECT_CHUNK = (
    "SELECT start_idx, end_idx, operations, finished FROM iogate_job_chunks"
    " WHERE job_id = $1 AND chunk = $2"
)
SELECT_RESULTS_IN = (
    "SELECT idx, success, result FROM iogate_job_results"
    " WHERE job_id = $1 AND idx >= $2 AND idx < $3"
)
SELECT_RESULTS_PAGE = (
    "SELECT idx, success, result FROM iogate_job_results"
    " WHERE job_id = $1 AND idx > $2 ORDER BY idx LIMIT $3"
)
COUNT_RESULTS = "UPDATE iogate_jobs SET done = done + $2, failed = failed + $3 WHERE id = $1"
FINISH_CHUNK = (
    "UPDATE iogate_job_chunks SET finished = TRUE WHERE job_id = $1 AND chunk = $2 AND NOT finished"
)
# SET expressions read the row as it was before this UPDATE, in both
# databases; on PostgreSQL that is the latest committed row once the lock
# is granted, so two finishers cannot both see (or both miss) the last chunk.
LAST = f"status IN {OPEN} AND chunks_done + 1 >= chunks"
COUNT_CHUNK = (
    "UPDATE iogate_jobs SET chunks_done = chunks_done + 1,"
    f" status = CASE WHEN {LAST} THEN '{JobStatus.DONE.value}' ELSE status END,"
    f" started_at = CASE WHEN {LAST} THEN COALESCE(started_at, $2) ELSE started_at END,"
    f" finished_at = CASE WHEN {LAST} THEN $2 ELSE finished_at END"
    " WHERE id = $1"
)
START = (
    f"UPDATE iogate_jobs SET status = '{JobStatus.RUNNING.value}', started_at = $2"
    f" WHERE id = $1 AND status = '{JobStatus.QUEUED.value}'"
)
ADD_ATTEMPTS = "ALTER TABLE iogate_job_chunks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"
ATTEMPT = (
    "UPDATE iogate_job_chunks SET attempts = attempts + 1"
    " WHERE job_id = $1 AND chunk = $2 RETURNING attempts"
)
CANCEL = (
    f"UPDATE iogate_jobs SET status = '{JobStatus.CANCELLED.value}', cancelled = TRUE,"
    f" finished_at = $2 WHERE id = $1 AND status IN {OPEN}"
)
UNFINISHED = (
    "SELECT c.job_id, c.chunk FROM iogate_jobs j JOIN iogate_job_chunks c ON c.job_id = j.id"
    f" WHERE j.status IN {OPEN} AND NOT c.finished ORDER BY j.created_at, j.id, c.chunk"
)
DELETE = (
    "DELETE FROM iogate_job_results WHERE job_id = $1",
    "DELETE FROM iogate_job_chunks WHERE job_id = $1",
    "DELETE FROM iogate_jobs WHERE id = $1",
)


# -- dialects -----------------------------------------------------------------------


class Executor(Protocol):
    """The store's transaction: a failed statement raises instead of returning."""

    async def execute(self, query: str, params: Any = None) -> Result: ...


class Dialect:
    """What differs between the two databases: batched inserts, schema check."""

    schema_check: str
    schema_lock: str | None = None

    async def insert_chunks(
        self, tx: Executor, job_id: str, rows: list[tuple[int, int, int, str]]
    ) -> None:
        raise NotImplementedError

    async def insert_results(
        self, tx: Executor, job_id: str, results: list[tuple[int, bool, str]]
    ) -> tuple[int, int]:
        """Insert the results not stored yet: (how many, how many of them failed)."""
        raise NotImplementedError


class PostgresDialect(Dialect):
    # Arrays bound once per batch: one round trip for hundreds of rows.
    # The newest column: present, every table and index is (see _create_schema).
    schema_check = (
        "SELECT count(*) AS present FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'iogate_job_chunks'"
        " AND column_name = 'attempts'"
    )
    schema_lock = f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"
    _chunks = (
        "INSERT INTO iogate_job_chunks (job_id, chunk, start_idx, end_idx, operations)"
        " SELECT $1, c.chunk, c.start_idx, c.end_idx, c.operations"
        " FROM unnest($2::integer[], $3::bigint[], $4::bigint[], $5::text[])"
        " AS c(chunk, start_idx, end_idx, operations)"
    )
    _results = (
        "INSERT INTO iogate_job_results (job_id, idx, success, result)"
        " SELECT $1, r.idx, r.success, r.result"
        " FROM unnest($2::bigint[], $3::boolean[], $4::text[]) AS r(idx, success, result)"
        " ON CONFLICT DO NOTHING RETURNING success"
    )

    async def insert_chunks(
        self, tx: Executor, job_id: str, rows: list[tuple[int, int, int, str]]
    ) -> None:
        for batch in batches(rows, lambda row: len(row[3])):
            columns = [list(column) for column in zip(*batch, strict=True)]
            await tx.execute(self._chunks, [job_id, *columns])

    async def insert_results(
        self, tx: Executor, job_id: str, results: list[tuple[int, bool, str]]
    ) -> tuple[int, int]:
        new = failed = 0
        for batch in batches(results, lambda row: len(row[2])):
            columns = [list(column) for column in zip(*batch, strict=True)]
            inserted = (await tx.execute(self._results, [job_id, *columns])).data or []
            new += len(inserted)
            failed += sum(1 for row in inserted if not row["success"])
        return new, failed


class SQLiteDialect(Dialect):
    # Multi-row VALUES; each statement counts what it inserted (changes()),
    # failed results apart from the rest so the counters need no RETURNING.
    schema_check = (
        "SELECT count(*) AS present FROM pragma_table_info('iogate_job_chunks')"
        " WHERE name = 'attempts'"
    )

    async def insert_chunks(
        self, tx: Executor, job_id: str, rows: list[tuple[int, int, int, str]]
    ) -> None:
        for batch in batches(rows, lambda row: len(row[3])):
            values = ", ".join(["(?, ?, ?, ?, ?)"] * len(batch))
            params = [value for row in batch for value in (job_id, *row)]
            await tx.execute(
                "INSERT INTO iogate_job_chunks (job_id, chunk, start_idx, end_idx, operations)"
                f" VALUES {values}",
                params,
            )

    async def insert_results(
        self, tx: Executor, job_id: str, results: list[tuple[int, bool, str]]
    ) -> tuple[int, int]:
        new = failed = 0
        for success in (False, True):
            same = [row for row in results if row[1] is success]
            for batch in batches(same, lambda row: len(row[2])):
                values = ", ".join(["(?, ?, ?, ?)"] * len(batch))
                params = [value for row in batch for value in (job_id, *row)]
                result = await tx.execute(
                    "INSERT INTO iogate_job_results (job_id, idx, success, result)"
                    f" VALUES {values} ON CONFLICT DO NOTHING",
                    params,
                )
                count = result.rows_affected or 0
                new += count
                failed += 0 if success else count
        return new, failed


def result_row(result: Mapping[str, Any], success: bool) -> tuple[bool, str]:
    """(success, JSON text) of a result as stored.

    Encoded as ``GET /batch/jobs/{id}`` serves it, two levels down
    (``{"results": [{...}]}``), and with the gateway's fallbacks (``default=str``,
    non-string keys). A result that JSON cannot hold (nested past orjson's 254
    levels, say a jsonb value the database built) is stored as that
    operation's failure: refusing it would fail the chunk on every delivery,
    re-running its operations, and a result stored but not servable would make
    every read of the job a 500.
    """
    try:
        text = orjson.dumps([[result]], default=str, option=orjson.OPT_NON_STR_KEYS)[2:-2]
        return bool(success), text.decode()
    except orjson.JSONEncodeError as exc:
        resource, operation = result.get("resource"), result.get("operation")
        failure = Result.fail(
            f"the result cannot be stored as JSON: {exc}",
            "query_error",
            resource=resource if isinstance(resource, str) else None,
            operation=operation if isinstance(operation, str) else None,
        )
        return False, orjson.dumps(failure.to_dict()).decode()


def batches(rows: list[Any], size: Callable[[Any], int]) -> Iterator[list[Any]]:
    """``rows`` cut at :data:`BATCH_ROWS` rows or :data:`BATCH_BYTES` of text."""
    batch: list[Any] = []
    total = 0
    for row in rows:
        weight = size(row)
        if batch and (len(batch) >= BATCH_ROWS or total + weight > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(row)
        total += weight
    if batch:
        yield batch
