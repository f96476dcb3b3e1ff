"""The in-process dispatcher: no broker, chunks run where they were published.

The embedded default (``[jobs] broker = ""``): an in-memory queue that
``consume`` drains in the same process. Nothing here is durable; the job
store is (see :class:`InProcessDispatcher`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from iogate.core.errors import ClosedError, ConfigError
from iogate.jobs.dispatch.common import (
    DEFAULT_RETRY_BACKOFF,
    State,
    check_prefetch,
    logger,
    retry_wait,
    stop_all,
)
from iogate.jobs.interfaces import ChunkHandler
from iogate.jobs.model import ChunkTask

__all__ = ["MAX_HANDLER_FAILURES", "InProcessDispatcher"]

MAX_HANDLER_FAILURES = 5  # in-process only: then the chunk waits for a restart


class InProcessDispatcher:
    """Chunks on an in-memory queue, run by ``consume`` in this same process.

    The embedded default (``[jobs] broker = ""``). Nothing here is durable:
    durability comes from the job store, whose unfinished chunks the caller
    publishes again at start-up (``store.unfinished()``), which is what
    :class:`~iogate.jobs.service.JobService` does. A task already queued,
    running or waiting for a retry is not queued twice. A handler that
    raises has its chunk queued again after a full-jitter backoff; after
    ``max_failures`` failures the chunk is dropped with an error log (the
    store still lists it unfinished, so the next start-up resumes it).
    """

    def __init__(
        self,
        *,
        max_failures: int = MAX_HANDLER_FAILURES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    ) -> None:
        if max_failures < 1:
            raise ConfigError(f"max_failures must be at least 1, got {max_failures}")
        self.max_failures = max_failures
        self.retry_backoff = retry_backoff
        self._state = State.UNOPENED
        self._queue: asyncio.Queue[ChunkTask | None] = asyncio.Queue()
        self._failures: dict[str, int] = {}  # every task queued, running or waiting
        self._retries: set[asyncio.TimerHandle] = set()

    def __repr__(self) -> str:
        return (
            f"<InProcessDispatcher {self._state.value}: {self._queue.qsize()} queued, "
            f"{self.unfinished} unfinished>"
        )

    @property
    def unfinished(self) -> int:
        """Tasks queued, running or waiting for a retry."""
        return len(self._failures)

    async def __aenter__(self) -> InProcessDispatcher:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        if self._state is State.CLOSED:
            raise ClosedError("this dispatcher is closed; create a new one")
        self._state = State.OPEN

    async def aclose(self) -> None:
        """Forget every queued task and stop every ``consume``; idempotent."""
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        self._failures.clear()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)  # each consumer passes it on and returns

    async def publish(self, tasks: Sequence[ChunkTask]) -> None:
        self._require_open()
        for task in tasks:
            if task.message_id not in self._failures:
                self._failures[task.message_id] = 0
                self._queue.put_nowait(task)

    async def consume(self, handler: ChunkHandler, *, prefetch: int) -> None:
        self._require_open()
        check_prefetch(prefetch)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                if len(running) >= prefetch:
                    await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
                    continue
                task = await self._queue.get()
                if task is None:
                    self._queue.put_nowait(None)
                    return
                runner = asyncio.create_task(self._run(task, handler))
                running.add(runner)
                runner.add_done_callback(running.discard)
        finally:
            await stop_all(running)

    async def _run(self, task: ChunkTask, handler: ChunkHandler) -> None:
        try:
            await handler(task)
        except asyncio.CancelledError:
            if self._state is State.OPEN:  # consume was cancelled: keep it for the next one
                self._queue.put_nowait(task)
            raise
        except Exception as exc:
            self._failed(task, exc)
        else:
            self._failures.pop(task.message_id, None)

    def _failed(self, task: ChunkTask, exc: Exception) -> None:
        if self._state is not State.OPEN:
            return
        failures = self._failures.get(task.message_id, 0) + 1
        if failures >= self.max_failures:
            self._failures.pop(task.message_id, None)
            logger.error(
                "job %s chunk %d failed %d times, dropped until the next start-up: %r",
                task.job_id,
                task.chunk,
                failures,
                exc,
            )
            return
        self._failures[task.message_id] = failures
        delay = retry_wait(failures, self.retry_backoff)
        logger.warning(
            "job %s chunk %d failed (%d of %d), retrying in %.1f s: %r",
            task.job_id,
            task.chunk,
            failures,
            self.max_failures,
            delay,
            exc,
        )
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def requeue() -> None:
            assert handle is not None
            self._retries.discard(handle)
            if self._state is State.OPEN:
                self._queue.put_nowait(task)

        handle = loop.call_later(delay, requeue)
        self._retries.add(handle)

    def _require_open(self) -> None:
        if self._state is not State.OPEN:
            raise ClosedError(f"dispatcher is {self._state.value}; call open() first")
