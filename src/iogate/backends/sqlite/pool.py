"""The manager's connections: parallel readers and one writer, each a thread.

Layout: ``readers`` connections opened with ``PRAGMA query_only = ON`` serve
reads (WAL lets them run beside the writer); one writer connection takes
every write. Reads pile onto the first reader not stuck on a long statement
(:meth:`SQLiteConnections._pick_reader`); writes queue on the writer, where
consecutive ones commit together.

Transactions and statements that must run alone (PRAGMA, VACUUM, ...) hold
the writer as a session (:meth:`SQLiteConnections._writer_session`); writes
arriving meanwhile wait on the loop side, so they never run inside the
session's transaction.

:class:`SQLiteConnections` is the part of the manager that owns and opens
these workers and queues jobs on them; what runs where is decided by
:class:`~iogate.backends.sqlite.manager.AsyncSQLiteManager`.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from iogate.backends.base import AsyncDatabaseManager
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import ClosedError, PoolExhaustedError
from iogate.core.resource import PoolStats
from iogate.core.sqlguard import Access

from .connection import (
    Args,
    Connection,
    Job,
    Limits,
    Outcome,
    open_connection,
)
from .groups import group_write
from .statements import run_statement
from .worker import (
    STATEMENT_LATE,
    WRITE_LATE,
    Worker,
    abandon_workers,
    bounded,
)

__all__ = ["SQLiteConnections"]

T = TypeVar("T")

# A reader busy with one statement for longer than this (seconds) is passed
# over for new reads (see SQLiteConnections._pick_reader).
_STALLED_AFTER = 0.001


class SQLiteConnections(AsyncDatabaseManager):
    """The readers and the writer of one SQLite database, and their queues."""

    def __init__(self, path: str, options: DatabaseOptions, *, name: str | None) -> None:
        super().__init__(name=name)
        self.options = options
        self.path = path
        self._in_memory = path == ":memory:" or "mode=memory" in path
        self._reader_count = 0 if self._in_memory else max(1, options.max_connections - 1)
        self._writer: Worker | None = None
        self._readers: list[Worker] = []
        # Statements queued or running per reader: reads go to the
        # least-loaded reader and queue in its thread back to back.
        self._reader_load: list[int] = []
        self._writes_pending = 0
        # A session (transaction or solo statement) has the writer to itself:
        # writes arriving meanwhile wait here, not in the writer's queue, so
        # they never run inside the session's transaction.
        self._writer_lock = asyncio.Lock()
        self._session_active = False
        self._deferred: list[Job] = []
        self._closing = False
        self._abandon: weakref.finalize[Any, Any] | None = None

    def pool_stats(self) -> PoolStats:
        busy = sum(1 for load in self._reader_load if load)
        writer_busy = self._writer_lock.locked() or self._writes_pending > 0
        return {
            "size": len(self._readers) + (1 if self._writer else 0),
            "max_size": self._reader_count + 1,
            "in_use": busy + (1 if writer_busy else 0),
            "idle": len(self._readers) - busy,
            "waiting": sum(max(0, load - 1) for load in self._reader_load),
        }

    def pool_details(self) -> dict[str, int]:
        return {"readers": len(self._readers), "write_queue": self._writes_pending}

    # -- lifecycle ------------------------------------------------------------

    def _connector(self, *, reader: bool) -> Callable[[], Connection]:
        # Only plain values go to the thread: it must not keep the manager
        # alive (an unclosed manager has to be collectable to warn).
        return functools.partial(
            open_connection,
            self.path,
            busy_ms=int(self.options.busy_timeout * 1000),
            synchronous=self.options.synchronous.upper(),
            reader=reader,
            wal=not reader and not self._in_memory,
            statement_timeout=self.options.statement_timeout,
        )

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self._closing = False
        try:
            self._writer = Worker(f"iogate-sqlite-{self.name}-writer", loop)
            await self._writer.start(self._connector(reader=False))
            for number in range(self._reader_count):
                reader = Worker(f"iogate-sqlite-{self.name}-reader-{number}", loop)
                self._readers.append(reader)
                self._reader_load.append(0)
                await reader.start(self._connector(reader=True))
        except BaseException:
            await self._close()
            raise
        self._abandon = weakref.finalize(self, abandon_workers, [self._writer, *self._readers])
        self._abandon.atexit = False  # daemon threads end with the process anyway

    async def _close(self) -> None:
        self._closing = True
        if self._abandon is not None:
            self._abandon.detach()
        for _, _, future in self._deferred:
            if not future.done():
                future.set_exception(ClosedError(f"{self.name}: manager closed"))
        self._deferred.clear()
        async with self._writer_lock:
            workers = [*self._readers, *([self._writer] if self._writer else [])]
            self._readers.clear()
            self._reader_load.clear()
            self._writer = None
            for worker in workers:
                await worker.stop()

    def _call(
        self, worker: Worker, fn: Callable[..., T], args: tuple[Any, ...], deadline: Deadline
    ) -> Awaitable[T]:
        """Queue ``fn`` on ``worker``; await the result to run it within the deadline."""
        return bounded(worker.submit(fn, args), deadline, STATEMENT_LATE)

    # -- reads ----------------------------------------------------------------

    async def _read(
        self,
        query: str,
        args: Args,
        deadline: Deadline,
        limits: Limits,
        run: Callable[..., Outcome] = run_statement,
        guard: Access | None = None,
    ) -> Outcome:
        loads = self._reader_load
        index = self._pick_reader()
        loads[index] += 1
        job = (query, args, limits) if guard is None else (query, args, limits, guard)
        try:
            future = self._readers[index].submit(run, job)
            return await bounded(future, deadline, STATEMENT_LATE)
        finally:
            if index < len(loads):  # the manager may have closed meanwhile
                loads[index] -= 1

    def _pick_reader(self) -> int:
        """The first reader not stuck on a long statement, else the least loaded.

        Reads pile onto one reader rather than spreading: a point read holds
        the GIL for most of its few microseconds, so spreading them only adds
        GIL hand-offs between threads (measured: 40 % more CPU per read at
        concurrency 50). A reader that has spent more than ``_STALLED_AFTER``
        on one statement (which runs without the GIL) is passed over, so a
        slow query does not hold up the reads behind it.
        """
        now = time.perf_counter()
        for index, reader in enumerate(self._readers):
            started = reader.job_started
            if not started or now - started < _STALLED_AFTER:
                return index
        loads = self._reader_load
        return loads.index(min(loads))

    # -- writes ---------------------------------------------------------------

    async def _write(
        self,
        query: str,
        args: Args,
        deadline: Deadline,
        limits: Limits,
        guard: Access | None = None,
    ) -> Outcome:
        writer = self._writer
        if self._closing or writer is None:
            raise ClosedError(f"{self.name}: manager closed")
        job = (query, args, limits, guard)
        if self._session_active:
            future: asyncio.Future[Outcome] = writer.new_future()
            self._deferred.append((group_write, job, future))
        else:
            future = writer.submit(group_write, job)
        self._writes_pending += 1
        try:
            return await bounded(future, deadline, WRITE_LATE)
        finally:
            self._writes_pending -= 1

    def _release_deferred(self) -> None:
        """Hand the writes that waited out a session to the writer, in order."""
        deferred, self._deferred = self._deferred, []
        writer = self._writer
        for job in deferred:
            if job[2].done():
                continue
            if writer is None:
                job[2].set_exception(ClosedError(f"{self.name}: manager closed"))
            else:
                writer.enqueue(job)

    # -- sessions -------------------------------------------------------------

    @asynccontextmanager
    async def _writer_session(self, deadline: Deadline) -> AsyncIterator[Worker]:
        timeout = deadline.cap(self.options.acquire_timeout) or 0.0
        try:
            async with asyncio.timeout(timeout):
                await self._writer_lock.acquire()
        except TimeoutError:
            raise PoolExhaustedError(f"SQLite writer busy for more than {timeout:.3g}s") from None
        try:
            writer = self._writer
            if writer is None or self._closing:
                raise ClosedError(f"{self.name}: manager closed")
            self._session_active = True
            try:
                yield writer
            finally:
                self._session_active = False
                self._release_deferred()
        finally:
            self._writer_lock.release()
