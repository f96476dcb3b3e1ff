"""Durable batch jobs: a batch too large or too long for one request.

A job is cut into chunks of a few hundred operations (:mod:`.chunks`),
recorded in a SQL job store (:mod:`.store`: SQLite embedded, PostgreSQL
across machines), and dispatched one message per chunk on a broker
(:mod:`.dispatch`: in-process, NATS JetStream or RabbitMQ). Whoever takes
a chunk (:mod:`.runner`: the gateway itself, or ``iogate worker`` processes
anywhere) runs the operations that have no stored result yet, stores each
result keyed by (job, operation index), and only then acknowledges the
message: a chunk redelivered after a crash re-runs only what had no result.
:mod:`.service` ties them together for the gateway, the CLI and the library.
"""

from __future__ import annotations

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
    "ChunkTask",
    "JobError",
    "JobNotFoundError",
    "JobProgress",
    "JobStatus",
    "NewJob",
    "StoredResult",
]
