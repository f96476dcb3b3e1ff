"""The two seams of the job machinery: where jobs are kept, how chunks travel.

:class:`JobStore` keeps jobs, their chunks' operations and every
operation's result (SQL: :mod:`iogate.jobs.store`). :class:`Dispatcher`
carries :class:`~iogate.jobs.model.ChunkTask` messages from the gateway to
whoever runs them, with at-least-once delivery: a message is acknowledged
only after its handler returned, so a worker killed in the middle of a chunk
has that chunk redelivered (:mod:`iogate.jobs.dispatch`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from iogate.jobs.model import ChunkTask, JobProgress, NewJob, StoredResult

__all__ = ["ChunkHandler", "Dispatcher", "JobStore", "StoredChunk", "StoredJob"]

# Runs one chunk; returns when its results are stored. Raising leaves the
# message unacknowledged (it is redelivered).
ChunkHandler = Callable[[ChunkTask], Awaitable[None]]


class StoredJob(Protocol):
    """A job's record as the runner needs it (read-only: records may be frozen)."""

    @property
    def job_id(self) -> str: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def max_rows(self) -> int | None: ...
    @property
    def guards(self) -> dict[str, str]: ...
    @property
    def cancelled(self) -> bool: ...
    @property
    def submitted_by(self) -> str | None: ...


class StoredChunk(Protocol):
    """One chunk: its place in the job and its operations (read-only)."""

    @property
    def job_id(self) -> str: ...
    @property
    def chunk(self) -> int: ...
    @property
    def start(self) -> int:
        """Index of its first operation in the job."""
        ...

    @property
    def operations(self) -> list[Any]: ...
    @property
    def finished(self) -> bool: ...


class JobStore(Protocol):
    """Jobs, chunks and per-operation results in a SQL database.

    Every method raises :class:`~iogate.jobs.model.JobError` when the store
    cannot be reached, and never returns half a write: ``create`` writes the
    job and all its chunks in one transaction, ``store_results`` a chunk's
    new results in one.
    """

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def create(self, job: NewJob) -> None: ...

    async def job(self, job_id: str) -> StoredJob | None: ...

    async def chunk(self, job_id: str, chunk: int) -> StoredChunk | None: ...

    async def results_in(self, job_id: str, start: int, end: int) -> dict[int, StoredResult]:
        """Results already stored for indexes in [start, end)."""
        ...

    async def store_results(self, job_id: str, results: Sequence[StoredResult]) -> int:
        """Insert results not stored yet (an index already stored is kept as
        it was); returns how many were new."""
        ...

    async def finish_chunk(self, job_id: str, chunk: int) -> None:
        """Mark the chunk finished; the job is done once every chunk is."""
        ...

    async def start_chunk(self, job_id: str, chunk: int) -> int:
        """Note that a runner took the chunk (the job is running); how many
        times it has been taken, this one included."""
        ...

    async def progress(self, job_id: str) -> JobProgress | None: ...

    async def results_page(
        self, job_id: str, *, after: int = -1, limit: int = 100
    ) -> list[StoredResult]:
        """Stored results with index > ``after``, in index order, at most ``limit``."""
        ...

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job not yet finished; False when it is unknown or finished."""
        ...

    async def delete(self, job_id: str) -> bool:
        """Remove a job and everything recorded for it; False when unknown."""
        ...

    async def unfinished(self) -> list[ChunkTask]:
        """Chunks of jobs neither done nor cancelled whose chunk is not finished
        (for the embedded runner to resume after a restart)."""
        ...


class Dispatcher(Protocol):
    """Chunk messages on a broker, acknowledged after their handler returns."""

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def publish(self, tasks: Sequence[ChunkTask]) -> None:
        """Publish durably: returns once the broker has every message (raises
        JobError otherwise; publishing the same task twice is harmless)."""
        ...

    async def consume(self, handler: ChunkHandler, *, prefetch: int) -> None:
        """Run ``handler`` for each message, at most ``prefetch`` at once,
        until cancelled; acknowledge a message when its handler returns."""
        ...
