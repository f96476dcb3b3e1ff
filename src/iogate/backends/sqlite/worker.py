"""A connection's thread and its queues, and waiting for a job's outcome.

Each sqlite3 connection lives in its own worker thread, the only thread
that ever touches it. The event loop hands a worker jobs through a
``SimpleQueue``; the worker drains everything queued, runs it back to back
and hands the outcomes back with one ``call_soon_threadsafe`` per batch, so
under load one thread hop carries dozens of statements (docs/decisions.md:
this replaced aiosqlite, whose hop costs a future, a wakeup and a callback
per call). Consecutive writes in a drained batch commit together and
consecutive reads share one snapshot (:mod:`.groups`).

A job whose caller has given up (cancelled, deadline passed) before it
starts is skipped. One that is running when its caller gives up, or that
runs longer than ``statement_timeout``, is interrupted by SQLite's progress
handler (:class:`~.connection.JobClock`) and rolled back, so the thread is
free for the next job; a statement still runs fully or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from iogate.core.deadline import Deadline
from iogate.core.errors import ClosedError, OperationTimeoutError

from .connection import Completion, Connection, Job, close_connection
from .groups import (
    attempt,
    begin_reads,
    end_reads,
    group_read,
    group_write,
    run_group,
)

__all__ = ["STATEMENT_LATE", "WRITE_LATE", "Worker", "abandon_workers", "bounded"]

T = TypeVar("T")

# Most jobs one thread hop drains from its queue; also bounds a group commit.
_MAX_BATCH = 512
# A worker running a long batch hands back what it has finished at least this
# often (seconds), so a slow statement does not hold finished ones back.
_FLUSH_AFTER = 0.001


class Worker:
    """One sqlite3 connection and the one thread that ever touches it.

    The loop side (``submit``, ``stop``) and the thread side (``_serve``)
    share two queues: jobs in, completions out. Completions are handed to
    the loop in batches; ``_delivery_scheduled`` makes sure at most one
    delivery callback is pending, however many batches finish meanwhile.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self._loop = loop
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._completions: deque[Completion] = deque()
        self._delivery_scheduled = False
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        # perf_counter() when the running job started; 0.0 when idle. Written
        # by the thread, read by the loop (a float store is atomic).
        self.job_started = 0.0

    def __repr__(self) -> str:
        state = "stopping" if self._stopped else "running" if self._thread else "new"
        return f"<Worker {self.name} {state} queued={self._jobs.qsize()}>"

    # -- event loop side --

    async def start(self, connect: Callable[[], Connection]) -> None:
        """Start the thread, which opens the connection; raise what opening raised."""
        ready: asyncio.Future[None] = self._loop.create_future()
        thread = threading.Thread(
            target=self._serve, args=(connect, ready), name=self.name, daemon=True
        )
        thread.start()
        self._thread = thread  # only a started thread is ever stopped and joined
        await ready

    def new_future(self) -> asyncio.Future[Any]:
        return self._loop.create_future()

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        """Queue ``fn(conn, *args)``; its future resolves when it has run."""
        if self._stopped is not None:
            raise ClosedError(f"{self.name}: connection closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((fn, args, future))
        return future

    def enqueue(self, job: Job) -> None:
        """Queue a job made earlier (a write that waited out a session)."""
        if self._stopped is not None:
            raise ClosedError(f"{self.name}: connection closed")
        self._jobs.put(job)

    def abandon(self) -> None:
        """Let the thread close the connection and end, waiting for nothing.

        For a manager collected without close() (which warns): its threads
        and connections must not outlive it. Safe from any thread.
        """
        if self._thread is not None and self._stopped is None:
            # Nobody awaits this future; the thread still resolves it (or
            # finds the loop closed), which is harmless either way.
            self._jobs.put((close_connection, (), self._loop.create_future()))

    async def stop(self) -> None:
        """Close the connection after every job queued so far; join the thread."""
        thread = self._thread
        if thread is None:
            return
        if self._stopped is None:
            self._stopped = self._loop.create_future()
            self._jobs.put((close_connection, (), self._stopped))
        with contextlib.suppress(Exception):
            await asyncio.shield(self._stopped)
        # The thread returns right after handing back the close's outcome.
        thread.join()
        self._thread = None

    def _deliver(self) -> None:
        self._delivery_scheduled = False
        completions = self._completions
        while completions:
            future, value, succeeded = completions.popleft()
            if future.done():  # its caller gave up
                continue
            if succeeded:
                future.set_result(value)
            else:
                future.set_exception(value)

    # -- connection thread side --

    def _post(self, completions: list[Completion]) -> None:
        # The loop clears the flag before draining, so a batch appended after
        # its last pop always finds the flag clear and schedules a delivery.
        self._completions.extend(completions)
        if not self._delivery_scheduled:
            self._delivery_scheduled = True
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits
                self._loop.call_soon_threadsafe(self._deliver)

    def _serve(self, connect: Callable[[], Connection], ready: asyncio.Future[None]) -> None:
        try:
            conn: Connection | None = connect()
        except Exception as exc:
            conn = None
            self._post([(ready, exc, False)])
        else:
            self._post([(ready, None, True)])
        del connect
        jobs = self._jobs
        while True:
            batch = [jobs.get()]
            for _ in range(min(jobs.qsize(), _MAX_BATCH - 1)):
                batch.append(jobs.get_nowait())
            if conn is None:
                if not self._refuse(batch):
                    return
            elif not self._run_batch(conn, batch):
                return

    def _run_batch(self, conn: Connection, batch: list[Job]) -> bool:
        """Run a drained batch in order; False once the connection is closed."""
        done: list[Completion] = []
        now = self.job_started = time.perf_counter()
        flush_at = now + _FLUSH_AFTER
        index, size = 0, len(batch)
        reading = False  # inside a read transaction (see group_read)
        clock = conn.clock  # each job's deadline, for SQLite's progress handler
        timeout = clock.timeout
        while index < size:
            fn, args, future = batch[index]
            if fn is group_write:
                end = index + 1
                while end < size and batch[end][0] is group_write:
                    end += 1
                done += run_group(conn, batch[index:end])
                index = end
            elif fn is close_connection:
                self._post(done)
                self._post([attempt(conn, fn, args, future)])
                return False
            else:
                if not future.cancelled():
                    if (
                        fn is group_read
                        and not reading
                        and index + 1 < size
                        and batch[index + 1][0] is group_read
                    ):
                        reading = begin_reads(conn)
                    clock.running = future
                    clock.expires_at = now + timeout
                    done.append(attempt(conn, fn, args, future))
                index += 1
                if reading and (index == size or batch[index][0] is not group_read):
                    reading = end_reads(conn)
            now = self.job_started = time.perf_counter()
            if done and now >= flush_at:
                self._post(done)
                done = []
                flush_at = now + _FLUSH_AFTER
        self.job_started = 0.0
        clock.running = None
        clock.expires_at = math.inf
        if done:
            self._post(done)
        return True

    def _refuse(self, batch: list[Job]) -> bool:
        """The connection never opened: fail every job; False at the close job."""
        for fn, _, future in batch:
            if fn is close_connection:
                self._post([(future, None, True)])
                return False
            self._post([(future, ClosedError(f"{self.name}: connection failed to open"), False)])
        return True


# -- waiting for a job (event loop) ------------------------------------------

STATEMENT_LATE = "statement did not finish within the deadline ({:.3g}s)"
WRITE_LATE = "write not finished within the deadline ({:.3g}s); it may still be committed"


def bounded(future: asyncio.Future[T], deadline: Deadline, late: str) -> Awaitable[T]:
    """``future`` bounded by ``deadline``; the future itself when there is none.

    At the deadline the job's future is cancelled: a job still queued is
    skipped; one already running is interrupted in its thread (see
    :class:`JobClock`) and its outcome dropped. Either way the next job on
    that connection queues behind it, so nobody shares the connection
    mid-statement. Without a deadline no coroutine is added on the way
    (this is every operation's path).
    """
    timeout = deadline.remaining()
    if timeout is None:
        return future
    return _within(future, timeout, late)


async def _within(future: asyncio.Future[T], timeout: float, late: str) -> T:
    try:
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError:
        raise OperationTimeoutError(late.format(timeout)) from None


def abandon_workers(workers: list[Worker]) -> None:
    for worker in workers:
        worker.abandon()
