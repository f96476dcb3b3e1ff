"""Running one chunk of a job: what a worker does for each broker message.

1. The job and the chunk are read from the store; a cancelled or unknown
   job, or a chunk already finished, is acknowledged without running.
2. Results already stored for the chunk (an earlier delivery that died part
   way) are given to the batch as finished: those operations do not run
   again, and their results still serve the others' references.
3. The rest run as one batch (``execute_batch``: per-operation isolation,
   references within the chunk), each result written to the store as it
   comes (a few at a time), so a crash loses at most the results of the
   operations in flight, and those are the only operations a redelivery
   runs again.
4. The chunk is marked finished; only then does the dispatcher acknowledge
   the message.

Cancelling a job is seen within :data:`CANCEL_POLL` seconds: the batch is
cancelled and the chunk acknowledged (the job is over; nothing redelivers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from iogate.core.result import Result
from iogate.core.sqlguard import Access
from iogate.jobs.chunks import prepare_chunk
from iogate.jobs.interfaces import JobStore
from iogate.jobs.model import ChunkTask, StoredResult
from iogate.orchestrator.batch import execute_batch
from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator

__all__ = ["CANCEL_POLL", "MAX_CHUNK_ATTEMPTS", "TRUSTED", "ChunkRunner", "guard_names"]

logger = logging.getLogger("iogate.jobs")

CANCEL_POLL = 0.5  # seconds between checks of the job's cancelled flag
FLUSH_EVERY = 50  # results written to the store in one transaction, at most
FLUSH_AFTER = 0.2  # seconds a finished result may wait to be written
TRUSTED = "trusted"  # a database's guard entry for trusted (admin) SQL
# Runs of one chunk before its remaining operations fail instead (a poison chunk).
MAX_CHUNK_ATTEMPTS = 5


def guard_names(guards: Mapping[str, Access | None]) -> dict[str, str]:
    """The guards as a job stores them: ``"read"``, ``"write"`` or ``"trusted"``."""
    return {name: TRUSTED if access is None else access.value for name, access in guards.items()}


def _guard_for(stored: Mapping[str, str]) -> Any:
    def guard(name: str) -> Access | None:
        value = stored.get(name)
        if value == TRUSTED:
            return None
        if value == Access.WRITE.value:
            return Access.WRITE
        return Access.READ  # unknown to the submitter: the least access

    return guard


class _ResultWriter:
    """Results as they finish, written to the store a few at a time."""

    def __init__(self, store: JobStore, job_id: str, start: int) -> None:
        self.store = store
        self.job_id = job_id
        self.start = start
        self.pending: list[StoredResult] = []
        self.wake = asyncio.Event()
        self.written = 0
        self.stopping = False

    def add(self, index: int, result: Result) -> None:
        self.pending.append(
            StoredResult(index=self.start + index, success=result.success, result=result.to_dict())
        )
        if len(self.pending) >= FLUSH_EVERY:
            self.wake.set()

    async def run(self) -> None:
        """Write pending results every FLUSH_AFTER seconds (or sooner when many),
        until :meth:`stop`: a write under way is finished, never cut."""
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_AFTER):
                    await self.wake.wait()
            self.wake.clear()
            await self.flush()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    async def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:FLUSH_EVERY], self.pending[FLUSH_EVERY:]
            try:
                self.written += await self.store.store_results(self.job_id, batch)
            except BaseException:
                self.pending[:0] = batch  # kept for the next try, or lost with the process
                raise


class ChunkRunner:
    """Runs chunks of jobs from ``store`` on ``orchestrator``'s resources."""

    def __init__(self, store: JobStore, orchestrator: AsyncOperationOrchestrator) -> None:
        self.store = store
        self.orchestrator = orchestrator
        self.chunks_run = 0
        self.operations_run = 0

    async def __call__(self, task: ChunkTask) -> None:
        await self.run(task)

    async def run(self, task: ChunkTask) -> None:
        """Run ``task``'s chunk to the end (or to the job's cancellation)."""
        job = await self.store.job(task.job_id)
        if job is None or job.cancelled:
            return
        chunk = await self.store.chunk(task.job_id, task.chunk)
        if chunk is None or chunk.finished:
            return
        attempts = await self.store.start_chunk(task.job_id, task.chunk)
        end = chunk.start + len(chunk.operations)
        stored = await self.store.results_in(task.job_id, chunk.start, end)
        if attempts > MAX_CHUNK_ATTEMPTS and len(stored) < len(chunk.operations):
            await self._give_up(task, chunk.start, end, stored, attempts)
            return
        if len(stored) < len(chunk.operations):
            finished = {
                index - chunk.start: Result.from_dict(found.result)
                for index, found in stored.items()
            }
            operations = prepare_chunk(chunk.operations, job_id=task.job_id, start=chunk.start)
            writer = _ResultWriter(self.store, task.job_id, chunk.start)
            started = time.perf_counter()
            try:
                cancelled = await self._run_batch(task, operations, finished, job, writer)
            except asyncio.CancelledError:
                # This runner is stopping (shutdown, reload): keep the results
                # that are in, so the chunk's next run repeats only what was
                # in flight (each store call is bounded by its timeouts).
                with contextlib.suppress(Exception):
                    await asyncio.shield(writer.flush())
                raise
            await writer.flush()
            self.operations_run += writer.written
            logger.info(
                "job %s chunk %d: %d operations in %.3fs%s",
                task.job_id,
                task.chunk,
                writer.written,
                time.perf_counter() - started,
                " (job cancelled)" if cancelled else "",
            )
            if cancelled:
                return
        await self.store.finish_chunk(task.job_id, task.chunk)
        self.chunks_run += 1

    async def _give_up(
        self, task: ChunkTask, start: int, end: int, stored: Mapping[int, Any], attempts: int
    ) -> None:
        """A chunk taken too often without finishing (its runner crashed or
        failed each time): every operation without a result fails, alone, and
        the job goes on instead of sending the chunk round for ever."""
        reason = (
            f"not run: chunk {task.chunk} was taken {attempts - 1} times without finishing "
            "(a runner crashed or failed on it each time); see the workers' logs"
        )
        failed = [
            StoredResult(
                index=index,
                success=False,
                result=Result.fail(reason, "internal_error").to_dict(),
            )
            for index in range(start, end)
            if index not in stored
        ]
        logger.error("job %s chunk %d: %s", task.job_id, task.chunk, reason)
        await self.store.store_results(task.job_id, failed)
        await self.store.finish_chunk(task.job_id, task.chunk)
        self.chunks_run += 1

    async def _run_batch(
        self,
        task: ChunkTask,
        operations: list[Any],
        finished: dict[int, Result],
        job: Any,
        writer: _ResultWriter,
    ) -> bool:
        """Run the batch; True when the job was cancelled meanwhile."""
        batch = asyncio.create_task(
            execute_batch(
                self.orchestrator,
                operations,
                concurrency=job.concurrency,
                max_rows=job.max_rows,
                on_result=writer.add,
                guard=_guard_for(job.guards),
                finished=finished,
            )
        )
        flusher = asyncio.create_task(writer.run())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {batch, flusher}, timeout=CANCEL_POLL, return_when=asyncio.FIRST_COMPLETED
                )
                if flusher in done:
                    flusher.result()  # the store failed: raise (the chunk is redelivered)
                if batch in done:
                    batch.result()
                    return False
                current = await self.store.job(task.job_id)
                if current is None or current.cancelled:
                    batch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await batch
                    return True
        finally:
            batch.cancel()
            writer.stop()  # ends after the write under way (store calls are bounded)
            await asyncio.gather(batch, flusher, return_exceptions=True)
