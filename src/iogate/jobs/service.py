"""Submitting, watching and cancelling jobs: one service for the gateway,
the CLI and the library.

::

    service = await JobService.start(orchestrator, store="sqlite:///jobs.db")
    job = await orchestrator.submit_batch_job(operations)   # or service.submit(...)
    progress = await job.wait()                              # JobProgress
    async for result in job.results():                       # StoredResult, in order
        ...

With no ``broker`` the service also runs the chunks, in this process, and
resumes the unfinished chunks of earlier runs when it starts (the job store
is the durable part). With a broker (``nats://...``, ``amqp://...``) it only
publishes them, and ``iogate worker`` processes run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from iogate.core.errors import InvalidRequestError, OperationTimeoutError
from iogate.core.params import MAX_PARAMS
from iogate.core.sqlguard import Access
from iogate.jobs.chunks import plan_chunks
from iogate.jobs.interfaces import Dispatcher, JobStore
from iogate.jobs.model import (
    ChunkTask,
    JobError,
    JobNotFoundError,
    JobProgress,
    NewJob,
    StoredResult,
    new_job_id,
)
from iogate.jobs.runner import ChunkRunner, guard_names
from iogate.orchestrator.batch import DEFAULT_CONCURRENCY, MAX_CONCURRENCY
from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_OPERATIONS", "JobHandle", "JobService"]

logger = logging.getLogger("iogate.jobs")

DEFAULT_CHUNK_SIZE = 250
DEFAULT_MAX_OPERATIONS = 1_000_000
WAIT_POLL = 0.2  # seconds between progress reads while waiting for a job
CONSUME_RETRY_MAX = 5.0  # seconds between attempts to take chunks again, at most
PLAN_INLINE_MAX = 1000  # operations planned on the event loop; more go to a thread


class JobHandle:
    """A submitted job: its id and what can be asked of it."""

    def __init__(self, service: JobService, job_id: str, total: int) -> None:
        self.service = service
        self.job_id = job_id
        self.total = total

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id} total={self.total}>"

    async def progress(self) -> JobProgress:
        return await self.service.progress(self.job_id)

    async def wait(self, timeout: float | None = None) -> JobProgress:
        """The job's progress once it is done or cancelled; OperationTimeoutError
        after ``timeout`` seconds (the job goes on)."""
        return await self.service.wait(self.job_id, timeout=timeout)

    async def cancel(self) -> JobProgress:
        return await self.service.cancel(self.job_id)

    def results(self, *, page: int = 500) -> AsyncIterator[StoredResult]:
        """Every stored result, in index order, read ``page`` at a time."""
        return self.service.iter_results(self.job_id, page=page)


class JobService:
    """Jobs over a store and a dispatcher, and (with no broker) their runner."""

    def __init__(
        self,
        orchestrator: AsyncOperationOrchestrator,
        store: JobStore,
        dispatcher: Dispatcher,
        *,
        run_chunks: bool,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_operations: int = DEFAULT_MAX_OPERATIONS,
        max_params: int = MAX_PARAMS,
        runner_chunks: int = 2,
        resume: bool | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.store = store
        self.dispatcher = dispatcher
        self.run_chunks = run_chunks
        self.chunk_size = chunk_size
        self.max_operations = max_operations
        self.max_params = max_params
        self.runner_chunks = runner_chunks
        # Re-publish unfinished chunks at start: the in-process queue forgets
        # them at exit; a broker keeps them (and RabbitMQ would duplicate them).
        self.resume_at_start = run_chunks if resume is None else resume
        self.runner = ChunkRunner(store, orchestrator)
        self._consumer: asyncio.Task[None] | None = None
        self._open = False

    @classmethod
    async def start(
        cls,
        orchestrator: AsyncOperationOrchestrator,
        *,
        store: str | JobStore = "sqlite:///iogate-jobs.db",
        broker: str | Dispatcher = "",
        queue: str = "iogate-jobs",
        ack_wait: float = 30.0,
        run_chunks: bool | None = None,
        resume: bool | None = None,
        **options: Any,
    ) -> JobService:
        """Open the store and the broker, attach to ``orchestrator``
        (``orchestrator.submit_batch_job``), and, with no broker (or
        ``run_chunks=True``), run chunks here. ``resume``: publish the store's
        unfinished chunks again at start (default: with no broker, since the
        in-process queue forgets them at exit). ``options``: ``chunk_size``,
        ``max_operations``, ``max_params``, ``runner_chunks``."""
        from iogate.jobs.dispatch import open_dispatcher
        from iogate.jobs.store import SQLJobStore

        job_store = SQLJobStore.from_url(store) if isinstance(store, str) else store
        dispatcher = (
            open_dispatcher(broker, queue=queue, ack_wait=ack_wait)
            if isinstance(broker, str)
            else broker
        )
        embedded = isinstance(broker, str) and not broker
        service = cls(
            orchestrator,
            job_store,
            dispatcher,
            run_chunks=embedded if run_chunks is None else run_chunks,
            resume=embedded if resume is None else resume,
            **options,
        )
        await service.open()
        return service

    async def open(self) -> None:
        """Open the store and the dispatcher; resume unfinished chunks when running them."""
        if self._open:
            return
        await self.store.open()
        try:
            await self.dispatcher.open()
        except BaseException:
            await self.store.aclose()
            raise
        self._open = True
        self.orchestrator.attach_jobs(self)
        if self.run_chunks:
            # A context of its own: started during a request, the runner must not
            # carry that request's id (or its deadline) into every chunk it runs.
            self._consumer = asyncio.create_task(
                self._consume(), name="iogate-jobs-runner", context=contextvars.Context()
            )
        if self.run_chunks and self.resume_at_start:
            await self.resume()

    async def resume(self) -> int:
        """Publish the store's unfinished chunks again (the embedded runner's
        queue forgets them at exit); how many."""
        unfinished = await self.store.unfinished()
        if unfinished:
            logger.info("resuming %d unfinished job chunk(s)", len(unfinished))
            await self.dispatcher.publish(unfinished)
        return len(unfinished)

    async def _consume(self) -> None:
        """Run chunks until closed; a lost broker connection is retried, not fatal."""
        failures = 0
        while self._open:
            started = time.monotonic()
            try:
                await self.dispatcher.consume(self.runner, prefetch=self.runner_chunks)
                return  # the dispatcher was closed
            except Exception as exc:  # a runner that stops taking chunks must say so and retry
                failures = 1 if time.monotonic() - started > CONSUME_RETRY_MAX else failures + 1
                wait = min(CONSUME_RETRY_MAX, 0.5 * 2 ** (failures - 1))
                if isinstance(exc, JobError):
                    logger.warning("taking chunks failed (%s); again in %.1fs", exc, wait)
                else:
                    logger.error(
                        "taking chunks failed unexpectedly; again in %.1fs", wait, exc_info=exc
                    )
                await asyncio.sleep(wait)  # the broker is away: wait before reconnecting

    async def aclose(self) -> None:
        """Stop running chunks (unfinished ones resume later) and close; idempotent."""
        if not self._open:
            return
        self._open = False
        self.orchestrator.attach_jobs(None)
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer
            self._consumer = None
        try:
            await self.dispatcher.aclose()
        finally:
            await self.store.aclose()

    async def __aenter__(self) -> JobService:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- jobs ---------------------------------------------------------------------

    async def submit(
        self,
        operations: Sequence[Any],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_rows: int | None = None,
        guards: Mapping[str, Access | None] | None = None,
        submitted_by: str | None = None,
    ) -> JobHandle:
        """Validate, record and dispatch a job; returns once it is durable.

        Refused as a whole (InvalidRequestError, nothing recorded): more than
        ``max_operations`` operations, what a batch refuses as a whole, a
        chain of references too long for one chunk. ``guards``: the access
        of raw SQL per database (None: trusted), as for ``execute_batch``;
        a database not listed runs read-only.
        """
        if isinstance(operations, str | bytes) or not isinstance(operations, Sequence):
            raise InvalidRequestError("operations must be a list of operation objects")
        if not operations:
            raise InvalidRequestError("a job needs at least one operation")
        if len(operations) > self.max_operations:
            raise InvalidRequestError(
                f"{len(operations)} operations; at most {self.max_operations} per job "
                "([jobs] max_operations)"
            )
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidRequestError(
                f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
            )
        plan = functools.partial(
            plan_chunks, operations, chunk_size=self.chunk_size, max_params=self.max_params
        )
        # Some 15 µs an operation: a large job is planned off the event loop.
        chunks = await asyncio.to_thread(plan) if len(operations) > PLAN_INLINE_MAX else plan()
        if guards is None:
            guards = {name: None for name in self.orchestrator.databases}
        job = NewJob(
            job_id=new_job_id(),
            operations=operations,
            chunks=chunks,
            concurrency=concurrency,
            max_rows=max_rows,
            guards=guard_names(guards),
            submitted_by=submitted_by,
        )
        await self.store.create(job)
        try:
            await self.dispatcher.publish(
                [ChunkTask(job_id=job.job_id, chunk=number) for number in range(len(chunks))]
            )
        except BaseException:
            # Not dispatched: a job nobody runs must not stay behind. A chunk
            # already published finds no job and is acknowledged unrun.
            with contextlib.suppress(Exception):
                await self.store.delete(job.job_id)
            raise
        return JobHandle(self, job.job_id, job.total)

    async def submit_from(self, operations: Sequence[Any], options: Mapping[str, Any]) -> JobHandle:
        """:meth:`submit` with its options in a mapping (``orchestrator.submit_batch_job``)."""
        return await self.submit(operations, **options)

    def handle(self, job_id: str, total: int = 0) -> JobHandle:
        return JobHandle(self, job_id, total)

    async def progress(self, job_id: str) -> JobProgress:
        found = await self.store.progress(job_id)
        if found is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return found

    async def wait(self, job_id: str, *, timeout: float | None = None) -> JobProgress:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = await self.progress(job_id)
            if current.finished:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise OperationTimeoutError(
                    f"job {job_id} not finished within {timeout}s "
                    f"({current.done} of {current.total} done)"
                )
            await asyncio.sleep(WAIT_POLL)  # another process runs it: poll the store

    async def cancel(self, job_id: str) -> JobProgress:
        """Cancel ``job_id`` (runners stop within a second); its progress after."""
        await self.store.cancel(job_id)
        return await self.progress(job_id)

    async def results(
        self, job_id: str, *, after: int = -1, limit: int = 100
    ) -> list[StoredResult]:
        await self.progress(job_id)  # JobNotFoundError for an unknown job
        return await self.store.results_page(job_id, after=after, limit=limit)

    async def iter_results(self, job_id: str, *, page: int = 500) -> AsyncIterator[StoredResult]:
        after = -1
        while True:
            batch = await self.results(job_id, after=after, limit=page)
            for stored in batch:
                yield stored
            if len(batch) < page:
                return
            after = batch[-1].index
