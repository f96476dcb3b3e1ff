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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar, Protocol

from iogate.core import events
from iogate.core.deadline import Deadline, deadline_error
from iogate.core.errors import IogateError, UnknownOutcomeError
from iogate.core.lifecycle import Lifecycle
from iogate.core.params import Params
from iogate.core.recording import record
from iogate.core.resource import Health, Kind, PoolStats, ResourceState, empty_pool_stats
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from iogate.core.stats import OperationStats

__all__ = [
    "AsyncDatabaseManager",
    "ManagerState",
    "SQLTransaction",
    "Transaction",
    "TransactionDriver",
    "TransactionStatus",
]

perf_counter = time.perf_counter
_NO_DEADLINE = Deadline.never()


# The lifecycle states of every resource (the name predates ResourceState).
ManagerState = ResourceState


class TransactionStatus(enum.StrEnum):
    """Where a transaction stands (compares equal to its string value)."""

    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    # COMMIT was sent and its answer lost: it may or may not have been applied.
    UNKNOWN = "unknown"


class Transaction(abc.ABC):
    """Statements run on one connection inside one database transaction.

    A statement that fails inside the block returns a failed Result as usual;
    the transaction is then rolled back at the end of the block instead of
    committed (``status`` says which), so it is always all or nothing.
    ``status`` is ``unknown`` when the answer to COMMIT was lost
    (:class:`UnknownOutcomeError`): it may have been applied.
    With a ``guard`` every statement is checked as untrusted SQL
    (:mod:`iogate.core.sqlguard`) before it runs.
    """

    def __init__(
        self, guard: Access | None = None, manager: AsyncDatabaseManager | None = None
    ) -> None:
        self.status = TransactionStatus.ACTIVE
        self.failed = False
        self.guard = guard
        # Statements are the manager's operations too: counted in its stats
        # and announced as events, as when they run alone.
        self._recorder = manager

    async def execute_query(self, query: str, params: Params = None) -> Result:
        started = time.perf_counter()
        tracer = events.tracer
        span = None
        if tracer is not None:  # the span names the manager the statement runs on
            span = tracer.start("database", self._recorder or self, query, params)
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
        manager = self._recorder
        if manager is None:
            result = result.with_timing((time.perf_counter() - started) * 1000)
        else:
            result.resource = manager.name
            if not result.operation:
                result.operation = "query"
            result = manager._finish(result, started)
        if tracer is not None:
            tracer.finish(span, result)
        return result

    @abc.abstractmethod
    async def _execute(self, query: str, params: Params) -> Result: ...


class TransactionDriver(Protocol):
    """What a SQL backend gives :class:`SQLTransaction`: how a transaction
    begins, how it ends, and how one statement runs inside it."""

    async def _begin(self, tx: SQLTransaction) -> None:
        """Open the transaction (``BEGIN``, read-only when ``tx.read_only``)."""

    async def _end(self, tx: SQLTransaction, *, commit: bool) -> None:
        """COMMIT (or, when the backend prefers it for ``tx``, ROLLBACK), or ROLLBACK.

        A COMMIT whose answer is lost raises :class:`UnknownOutcomeError`; a
        ROLLBACK that cannot be sent raises nothing (the server rolls back
        the transaction of a connection that goes away): the backend marks
        the connection for a reset or discard instead.
        """

    async def _statement(self, tx: SQLTransaction, query: str, params: Params) -> Result:
        """Run one statement of ``tx`` (iogate errors are raised, not returned)."""
        ...


class SQLTransaction(Transaction):
    """A transaction on one connection of a SQL backend: the block's logic, once.

    ``async with tx.block():`` begins it, yields it, and ends it: a block
    that raised or ran a failed statement is rolled back (``rolled_back``),
    any other is committed (``committed``). A COMMIT whose answer was lost
    leaves ``unknown``: the transaction may or may not have been applied
    (:class:`UnknownOutcomeError` is raised). The backend (``driver``) says
    how each step is done on its connection ``conn``.
    """

    def __init__(
        self,
        driver: TransactionDriver,
        conn: Any,
        deadline: Deadline,
        *,
        read_only: bool,
        guard: Access | None,
        manager: AsyncDatabaseManager | None = None,
    ) -> None:
        super().__init__(guard, manager)
        self.conn = conn
        self.deadline = deadline
        self.read_only = read_only
        # Set by a backend when a statement ended the transaction itself
        # (COMMIT, or DDL's implicit commit): nothing more may run in it.
        self.ended = False
        self._driver = driver

    async def _execute(self, query: str, params: Params) -> Result:
        return await self._driver._statement(self, query, params)

    @asynccontextmanager
    async def block(self) -> AsyncIterator[SQLTransaction]:
        driver = self._driver
        try:
            await driver._begin(self)
        except BaseException:
            self.status = TransactionStatus.ROLLED_BACK
            raise
        raised: BaseException | None = None
        try:
            yield self
        except BaseException as exc:
            self.failed = True
            raised = exc
        try:
            if self.failed:
                await driver._end(self, commit=False)
                self.status = TransactionStatus.ROLLED_BACK
            else:
                await driver._end(self, commit=True)
                self.status = TransactionStatus.COMMITTED
        except UnknownOutcomeError:
            self.status = TransactionStatus.UNKNOWN
            raise
        finally:
            if self.status is TransactionStatus.ACTIVE:
                self.status = TransactionStatus.ROLLED_BACK
        if raised is not None:
            raise raised


class AsyncDatabaseManager(Lifecycle):
    """Abstract base of the SQL, Redis and memory managers (seed 000)."""

    backend: ClassVar[str] = "database"
    # Whether ``_execute`` takes ``max_result_bytes`` (the SQL backends do).
    bounds_result_bytes: ClassVar[bool] = False

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name or self.backend)
        self._stats = OperationStats()

    @property
    def kind(self) -> Kind:
        return Kind.DATABASE

    @property
    def target(self) -> str:
        """Where the manager points, passwords redacted (each backend says)."""
        return self.backend

    # -- lifecycle (iogate.core.lifecycle) ----------------------------------

    async def initialize_pool(self) -> None:
        """Open the pool; idempotent (seed 000's name for ``open()``).

        Network backends bound the opening by their ``acquire_timeout``.
        """
        if self.state is not ManagerState.OPEN:
            await self._ensure_open()

    def _default_deadline(self) -> Deadline:
        """The deadline of a call made without one (none: unbounded)."""
        return _NO_DEADLINE

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
                raise deadline_error("the query", started=False)
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
            raise deadline_error(f"the ping of {self.name}", budget=timeout) from None

    def get_stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.backend,
            "state": self.state.value,
            **self._stats.snapshot(),
            "pool": {**self.pool_stats(), **self.pool_details()},
        }

    def pool_stats(self) -> PoolStats:
        return empty_pool_stats()

    def pool_details(self) -> dict[str, int]:
        """Backend-specific counters shown beside the pool stats (``/stats``)."""
        return {}

    def health(self) -> Health:
        return Health(self.state, "disabled")

    # -- for subclasses -------------------------------------------------------

    def _finish(self, result: Result, started: float, attempts: int = 1) -> Result:
        """Time, count and announce one finished operation (core.recording)."""
        return record(
            self._stats,
            result,
            started,
            self._name,
            "database",
            self.backend,
            result.operation or "query",
            attempts,
        )

    def _finish_each(self, results: list[Result], started: float) -> list[Result]:
        """Record each of a group's Results (``execute_many``) as one operation.

        The group ran from ``started``; each statement gets an equal share of
        that time, so the stats' latencies add up to the group's.
        """
        if not results:
            return results
        share = (perf_counter() - started) / len(results)
        name = self._name
        for result in results:
            result.resource = name
            if not result.operation:
                result.operation = "query"
            self._finish(result, perf_counter() - share)
        return results

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
