"""What a job is made of: its records, its broker message, its progress.

The broker carries :class:`ChunkTask` only (a job id and a chunk number,
never the operations: NATS refuses messages over 1 MiB and a chunk's
operations may be larger); everything else lives in the job store.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from iogate.core.errors import ErrorType, InvalidRequestError, IogateError, ResourceNotFoundError

__all__ = [
    "ChunkTask",
    "JobError",
    "JobNotFoundError",
    "JobProgress",
    "JobStatus",
    "NewJob",
    "StoredResult",
    "new_job_id",
]


class JobError(IogateError):
    """The job machinery failed (job store or broker unreachable, bad record)."""

    error_type: ErrorType = "connection_error"


class JobNotFoundError(ResourceNotFoundError):
    """No job with that id in the job store."""


class JobStatus(enum.StrEnum):
    QUEUED = "queued"  # accepted, no chunk started yet
    RUNNING = "running"  # at least one chunk started, some not finished
    DONE = "done"  # every operation has a result (some may have failed)
    CANCELLED = "cancelled"  # cancelled before every operation ran


def new_job_id() -> str:
    """A job id: 32 hex digits, unguessable (a job id is not an access check)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkTask:
    """The broker message for one chunk of one job."""

    job_id: str
    chunk: int

    @property
    def message_id(self) -> str:
        """Deduplication id (NATS ``Nats-Msg-Id``): one per chunk, ever."""
        return f"{self.job_id}.{self.chunk}"

    def encode(self) -> bytes:
        return orjson.dumps({"job": self.job_id, "chunk": self.chunk})

    @classmethod
    def decode(cls, data: bytes) -> ChunkTask:
        """The task in ``data``; InvalidRequestError for anything else."""
        try:
            raw = orjson.loads(data)
            job, chunk = raw["job"], raw["chunk"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise InvalidRequestError("not a chunk task message") from None
        if not isinstance(job, str) or type(chunk) is not int or chunk < 0:
            raise InvalidRequestError("not a chunk task message")
        return cls(job_id=job, chunk=chunk)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A job as submitted, already validated and cut into chunks.

    ``chunks``: (start, end) index ranges covering every operation in order.
    ``guards``: per database name, the access under which the submitter's
    raw SQL runs (``"read"``, ``"write"``; absent: trusted), as the key that
    submitted it was allowed: the worker applies what the gateway decided.
    """

    job_id: str
    operations: Sequence[Any]
    chunks: Sequence[tuple[int, int]]
    concurrency: int = 10
    max_rows: int | None = None
    guards: Mapping[str, str] = field(default_factory=dict)
    submitted_by: str | None = None

    @property
    def total(self) -> int:
        return len(self.operations)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredResult:
    """One operation's outcome as stored: ``result`` is ``Result.to_dict()``."""

    index: int
    success: bool
    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobProgress:
    """Where a job stands. Times are UNIX seconds (None: not yet)."""

    job_id: str
    status: JobStatus
    total: int
    done: int  # operations with a result, failed ones included
    failed: int
    chunks: int
    chunks_done: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def pending(self) -> int:
        return self.total - self.done

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.DONE, JobStatus.CANCELLED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status.value,
            "total": self.total,
            "done": self.done,
            "failed": self.failed,
            "pending": self.pending,
            "chunks": self.chunks,
            "chunks_done": self.chunks_done,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
