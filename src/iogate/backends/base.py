"""The manager contract every database backend implements.

``AsyncDatabaseManager`` owns the lifecycle (a state enum, ``async with``, an
idempotent ``close()``), turns every outcome into a ``Result``, keeps
per-manager statistics and emits one ``OperationEvent`` per operation. A
backend implements ``_open``, ``_close``, ``_execute``, ``_transaction`` and
``_ping``; it raises iogate errors (drivers' exceptions are mapped at its
edge) and the base class does the rest.

Result caps (``max_rows``, ``max_result_bytes``) bound what a backend reads,
not only what it returns: reading stops at ``max_rows + 1`` rows (the result
is ``truncated``), and a result that would exceed ``max_result_bytes`` fails
with :class:`ResultTooLargeError` (``result_too_large``) without being read
in full. How each backend stops is described in its module.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, ClassVar

from iogate.core import events
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    ClosedError,
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
)
from iogate.core.events import OperationEvent
from iogate.core.params import Params
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from iogate.core.stats import OperationStats

__all__ = ["AsyncDatabaseManager", "ManagerState", "Transaction"]

perf_counter = time.perf_counter
_NO_DEADLINE = Deadline.never()


class ManagerState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Transaction(abc.ABC):
    """Statements run on one connection inside one database transaction.

    A statement that fails inside the block returns a failed Result as usual;
    the transaction is then rolled back at the end of the block instead of
    committed (``status`` says which), so it is always all or nothing.
    With a ``guard`` every statement is checked as untrusted SQL
    (:mod:`iogate.core.sqlguard`) before it runs.
    """

    def __init__(self, guard: Access | None = None) -> None:
        self.status = "active"  # active | committed | rolled_back
        self.failed = False
        self.guard = guard

    async def execute_query(self, query: str, params: Params = None) -> Result:
        started = time.perf_counter()
        tracer = events.tracer
        span = tracer.start("database", self, query, params) if tracer is not None else None
        try:
            result = await self._execute(query, params)
        except IogateError as exc:
            result = Result.from_exception(exc, operation="query")
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                self.failed = True
            if tracer is not None:
                tracer.finish(span, None, exc)
            raise
        if not result.success:
            self.failed = True
        result = result.with_timing((time.perf_counter() - started) * 1000)
        if tracer is not None:
            tracer.finish(span, result)
        return result

    @abc.abstractmethod
    async def _execute(self, query: str, params: Params) -> Result: ...


class AsyncDatabaseManager(abc.ABC):
    """Abstract base of the SQL, Redis and memory managers (seed 000)."""

    backend: ClassVar[str] = "database"
    # Whether ``_execute`` takes ``max_result_bytes`` (the SQL backends do).
    bounds_result_bytes: ClassVar[bool] = False

    def __init__(self, *, name: str | None = None) -> None:
        self._name = name or self.backend
        self.state = ManagerState.UNOPENED
        # One opening at a time, shared by every caller that needs it; each
        # waits for it within its own deadline, and giving up (or being
        # cancelled) does not cancel it for the others.
        self._opening: asyncio.Task[None] | None = None
        self._closing = False
        self._stats = OperationStats()

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value
        self._renamed(value)

    def _renamed(self, name: str) -> None:
        """Hook for subclasses that label things (pools, metrics) by name."""
        return None

    # -- lifecycle ----------------------------------------------------------

    async def initialize_pool(self) -> None:
        """Open the pool; idempotent. Errors propagate as iogate errors.

        Network backends bound the opening by their ``acquire_timeout``.
        """
        if self.state is not ManagerState.OPEN:
            await self._ensure_open()

    async def _ensure_open(self, deadline: Deadline | None = None) -> None:
        """Open the manager if needed, waiting for it at most until ``deadline``.

        A caller whose deadline passes first gets a connection error; the
        opening goes on for the callers after it (network backends bound it
        by their ``acquire_timeout``).
        """
        if self.state is ManagerState.OPEN:
            return
        if self.state is ManagerState.CLOSED or self._closing:
            raise ClosedError(f"{self.name}: manager is closed and cannot be reopened")
        opening = self._opening
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open_once())
            opening.add_done_callback(self._opened)
            self._opening = opening
        timeout = None if deadline is None else deadline.remaining()
        if timeout is None:
            await asyncio.shield(opening)
            return
        wait = asyncio.timeout(timeout)
        try:
            async with wait:
                await asyncio.shield(opening)
        except TimeoutError:
            if not wait.expired():
                raise  # the opening's own error
            raise self._not_opened(timeout) from None

    async def _open_once(self) -> None:
        await self._open()
        self.state = ManagerState.OPEN

    def _opened(self, opening: asyncio.Task[None]) -> None:
        self._opening = None
        if not opening.cancelled():
            opening.exception()  # retrieved here too, in case nobody waited

    def _not_opened(self, timeout: float) -> IogateError:
        return DatabaseConnectionError(f"{self.name}: not connected within {timeout:.3g}s")

    def _default_deadline(self) -> Deadline:
        """The deadline of a call made without one (none: unbounded)."""
        return _NO_DEADLINE

    async def close(self) -> None:
        """Close the pool; idempotent. An opening under way is cancelled."""
        if self.state is ManagerState.CLOSED:
            return
        self._closing = True
        opening = self._opening
        if opening is not None:
            opening.cancel()
            await asyncio.wait([opening])
        was_open = self.state is ManagerState.OPEN
        self.state = ManagerState.CLOSED
        if was_open:
            await self._close()

    aclose = close

    async def __aenter__(self) -> AsyncDatabaseManager:
        await self.initialize_pool()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        # An in-process store holds nothing outside the process: no warning.
        if self.backend == "memory":
            return
        if getattr(self, "state", None) is ManagerState.OPEN:
            warnings.warn(
                f"{type(self).__name__} {self.name!r} was never closed",
                ResourceWarning,
                stacklevel=1,
            )

    # -- operations ---------------------------------------------------------

    async def execute_query(
        self,
        query: str,
        params: Params = None,
        *,
        deadline: Deadline | None = None,
        read_only: bool = False,
        max_rows: int | None = None,
        guard: Access | None = None,
        max_result_bytes: int | None = None,
    ) -> Result:
        """Run one statement and return its Result; never raises for a failure.

        ``read_only=True`` runs it in a read-only transaction, so the database
        itself refuses writes. ``max_rows`` caps the rows read and returned
        (``truncated`` says the cap was hit); ``max_result_bytes`` caps the
        result's size, failing with ``result_too_large`` beyond it (SQL
        backends; both default to the manager's options). ``guard`` treats ``query`` as
        untrusted SQL (:mod:`iogate.core.sqlguard`): one data statement that
        ``guard`` allows, in a transaction iogate opens and ends; anything
        else fails with ``forbidden_statement`` before it runs.
        """
        started = perf_counter()
        tracer = events.tracer
        span = tracer.start("database", self, query, params) if tracer is not None else None
        try:
            if deadline is None:
                deadline = self._default_deadline()
            elif deadline.expired():
                raise OperationTimeoutError("deadline passed before the query started")
            if self.state is not ManagerState.OPEN:
                await self._ensure_open(deadline)
            if max_result_bytes is not None and self.bounds_result_bytes:
                execute: Callable[..., Awaitable[Result]] = self._execute
                result = await execute(
                    query,
                    params,
                    deadline=deadline,
                    read_only=read_only,
                    max_rows=max_rows,
                    guard=guard,
                    max_result_bytes=max_result_bytes,
                )
            else:
                result = await self._execute(
                    query,
                    params,
                    deadline=deadline,
                    read_only=read_only,
                    max_rows=max_rows,
                    guard=guard,
                )
        except IogateError as exc:
            result = Result.from_exception(exc)
        except BaseException as exc:  # a cancellation: the span still ends
            if tracer is not None:
                tracer.finish(span, None, exc)
            raise
        result.resource = self._name
        if not result.operation:
            result.operation = "query"
        result = self._finish(result, started)
        if tracer is not None:
            tracer.finish(span, result)
        return result

    def transaction(
        self,
        *,
        read_only: bool = False,
        deadline: Deadline | None = None,
        guard: Access | None = None,
    ) -> AbstractAsyncContextManager[Transaction]:
        """``async with manager.transaction() as tx: await tx.execute_query(...)``.

        With ``guard``, every statement in it is checked as untrusted SQL;
        ``Access.READ`` also makes the transaction read-only. ``deadline``
        bounds the whole block's database work; without one, network
        backends bound each step (acquire, BEGIN, each statement, COMMIT) by
        their configured timeouts.
        """
        return self._managed_transaction(read_only, deadline or Deadline.never(), guard)

    @asynccontextmanager
    async def _managed_transaction(
        self, read_only: bool, deadline: Deadline, guard: Access | None
    ) -> AsyncIterator[Transaction]:
        await self._ensure_open(deadline)
        read_only = read_only or guard is Access.READ
        async with self._transaction(read_only=read_only, deadline=deadline, guard=guard) as tx:
            yield tx

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise an iogate error unless the resource answers within ``timeout``."""
        deadline = Deadline(timeout)
        await self._ensure_open(deadline)
        try:
            async with asyncio.timeout(deadline.remaining()):
                await self._ping()
        except TimeoutError:
            raise OperationTimeoutError(f"{self.name}: no answer within {timeout}s") from None

    def get_stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.backend,
            "state": self.state.value,
            **self._stats.snapshot(),
            "pool": self.pool_stats(),
        }

    def pool_stats(self) -> dict[str, int]:
        return {}

    # -- for subclasses -------------------------------------------------------

    def _finish(self, result: Result, started: float, attempts: int = 1) -> Result:
        """Time, count and announce one finished operation.

        This runs once per operation, so it reads the clock once and builds
        an event only when a hook is installed to receive it.
        """
        duration = perf_counter() - started
        # Whole microseconds, as round(ms, 3) would give, at a fifth of its cost.
        result.duration_ms = duration_ms = round(duration * 1_000_000) / 1000
        result.attempts = attempts
        error_type = result.error_type
        self._stats.record(duration_ms, error_type)
        if events.hooks:
            events.emit(
                OperationEvent(
                    self._name,
                    "database",
                    self.backend,
                    result.operation or "query",
                    duration,
                    error_type,
                    attempts,
                )
            )
        return result

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    async def _execute(
        self,
        query: str,
        params: Params,
        *,
        deadline: Deadline,
        read_only: bool,
        max_rows: int | None,
        guard: Access | None = None,
    ) -> Result:
        """Run one statement. Backends with ``bounds_result_bytes`` also take
        ``max_result_bytes: int | None = None`` (None: the options' cap)."""

    @abc.abstractmethod
    def _transaction(
        self, *, read_only: bool, deadline: Deadline, guard: Access | None = None
    ) -> AbstractAsyncContextManager[Transaction]: ...

    @abc.abstractmethod
    async def _ping(self) -> None: ...
