"""What the network SQL managers (PostgreSQL, MySQL) share: iogate's pool.

A subclass gives the driver's ``connect``/``close``, a description of its
target for messages (never with a password), a cheap liveness check, which
errors leave a session intact (``_leaves_clean``) and its own ``release``
(how a connection is judged clean and how it is reset differs per driver).
This class owns the pool, bounds every acquire, hands connections out
through one context manager (:meth:`acquire`, :class:`Checkout`) and keeps
the background tasks (resets, kills) that a cancelled caller must not
interrupt.

Deadlines. Every call ends by a deadline: the caller's, or, for a call made
without one, the configured timeouts (:meth:`_default_deadline`: acquire +
statement + :data:`DEADLINE_MARGIN`). A transaction block without a
deadline has no end known in advance, so each of its steps (BEGIN, each
statement, COMMIT or ROLLBACK) is bounded by the statement timeout plus the
margin (:meth:`_step_deadline`). The margin lets the server's own
``statement_timeout`` answer first while the server is alive; the client's
bound is for a server or network that has gone silent.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Generic, TypeVar

from iogate.backends.base import AsyncDatabaseManager, SQLTransaction, Transaction
from iogate.backends.pool import Pool, PooledConnection
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import DatabaseConnectionError, IogateError, PoolExhaustedError
from iogate.core.params import Params
from iogate.core.resource import PoolStats, ResourceState
from iogate.core.result import Result
from iogate.core.sqlguard import Access

__all__ = ["DEADLINE_MARGIN", "Checkout", "PooledDatabaseManager"]

C = TypeVar("C")

# How long past the statement timeout the client still waits for the answer.
DEADLINE_MARGIN = 0.5
_NEVER = Deadline.never()


class PooledDatabaseManager(AsyncDatabaseManager, Generic[C]):
    def __init__(
        self,
        *,
        name: str | None,
        options: DatabaseOptions,
        connect: Callable[[], Awaitable[C]] | None,
        close: Callable[[C], Awaitable[None]],
    ) -> None:
        super().__init__(name=name)
        self.options = options
        self._connect = connect or self._default_connect
        self._pool: Pool[C] = Pool(
            connect=self._connect,
            close=close,
            min_size=options.min_connections,
            max_size=options.max_connections,
            max_idle_time=options.max_idle_time,
            max_lifetime=options.max_lifetime,
            resource=self.name,
            backend=self.backend,
            check=self._check_connection,
            check_idle_after=options.idle_check_interval,
        )
        statement = options.statement_timeout
        self._step_budget = None if statement is None else statement + DEADLINE_MARGIN
        self._call_budget = (
            None if statement is None else options.acquire_timeout + statement + DEADLINE_MARGIN
        )
        self._background: set[asyncio.Task[None]] = set()

    @abc.abstractmethod
    async def _default_connect(self) -> C: ...

    @abc.abstractmethod
    def _target(self) -> str:
        """Where the pool connects, for messages (no password)."""

    @abc.abstractmethod
    async def _check_connection(self, raw: C) -> bool:
        """Whether a connection that sat idle still works (one cheap round trip)."""

    @abc.abstractmethod
    def release(self, conn: PooledConnection[Any], *, clean: bool = True) -> None: ...

    def pool_stats(self) -> PoolStats:
        return self._pool.stats()

    # -- transactions: one checkout, one SQLTransaction block ---------------------

    def _transaction(
        self, *, read_only: bool, deadline: Deadline, guard: Access | None = None
    ) -> AbstractAsyncContextManager[Transaction]:
        return self._pooled_transaction(read_only, deadline, guard)

    @asynccontextmanager
    async def _pooled_transaction(
        self, read_only: bool, deadline: Deadline, guard: Access | None
    ) -> AsyncIterator[Transaction]:
        async with self.acquire(deadline, stateless=guard is not None) as conn:
            tx = SQLTransaction(
                self,
                conn,
                deadline,
                read_only=read_only or self.options.read_only,
                guard=guard,
                manager=self,
            )
            async with tx.block():
                yield tx

    # The steps of SQLTransaction (iogate.backends.base.TransactionDriver).

    @abc.abstractmethod
    async def _begin(self, tx: SQLTransaction) -> None: ...

    @abc.abstractmethod
    async def _end(self, tx: SQLTransaction, *, commit: bool) -> None: ...

    @abc.abstractmethod
    async def _statement(self, tx: SQLTransaction, query: str, params: Params) -> Result: ...

    def _renamed(self, name: str) -> None:
        self._pool.resource = name

    # -- opening and deadlines ----------------------------------------------------

    async def _open(self) -> None:
        timeout = self.options.acquire_timeout
        try:
            await self._pool.open(timeout)
        except IogateError:
            raise
        except TimeoutError:
            raise self._not_opened(timeout) from None

    def _not_opened(self, timeout: float) -> IogateError:
        return DatabaseConnectionError(
            f"cannot connect to {self._target()}: no answer within {timeout:.3g}s"
        )

    def _default_deadline(self) -> Deadline:
        """A call without a deadline: acquire + statement timeout + the margin."""
        budget = self._call_budget
        return Deadline.never() if budget is None else Deadline(budget)

    def _step_deadline(self, deadline: Deadline) -> Deadline:
        """``deadline``, or for a block without one, a bound for its next step."""
        return deadline.or_within(self._step_budget)

    async def _close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._pool.close()

    def acquire(self, deadline: Deadline | None = None, *, stateless: bool = False) -> Checkout[C]:
        """``async with manager.acquire(deadline) as conn``: one pooled connection.

        Released on leaving the block, reset first unless it is known clean
        (see :class:`Checkout`). ``stateless``: the work done on it can set no
        session state (guarded SQL, a ping), so ``reset_session`` need not
        reset it. ``conn = await manager.acquire()`` also works; pair it with
        :meth:`release`.
        """
        return Checkout(self, deadline, stateless)

    async def _checkout(self, deadline: Deadline | None) -> PooledConnection[C]:
        await self._ensure_open(deadline)
        timeout = (deadline or Deadline.never()).cap(self.options.acquire_timeout)
        try:
            return await self._pool.acquire(timeout or 0.0)
        except PoolExhaustedError:
            raise
        except TimeoutError:
            raise self._not_opened(timeout or 0.0) from None

    def _leaves_clean(self, exc: BaseException) -> bool:
        """Whether an operation that raised ``exc`` left its session as it found it.

        By default none does (the connection is reset before reuse); a
        backend names the errors the server answered with cleanly.
        """
        return False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in a task of its own, awaited by ``close()``."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class Checkout(Generic[C]):
    """One connection checked out of a manager's pool (asyncpg's acquire shape).

    ``async with``: the block gets the :class:`PooledConnection`, and leaving
    it gives the connection back. It is returned as it is when the block
    ended normally, or with an error the backend knows leaves the session
    intact (:meth:`PooledDatabaseManager._leaves_clean`), and nothing marked
    it ``needs_reset``; otherwise the backend resets it first, and throws it
    away when the reset fails. Release is synchronous bookkeeping (a reset
    runs in a task of the manager's own), so a cancelled caller cannot leave
    a connection checked out. Awaited instead, it just checks one out.
    """

    __slots__ = ("_conn", "_deadline", "_manager", "_stateless")
    _conn: PooledConnection[C]

    def __init__(
        self, manager: PooledDatabaseManager[C], deadline: Deadline | None, stateless: bool
    ) -> None:
        self._manager = manager
        self._deadline = deadline
        self._stateless = stateless
        # _conn is set by __aenter__ (__aexit__ runs only after it succeeded).

    def __await__(self) -> Generator[Any, None, PooledConnection[C]]:
        return self._manager._checkout(self._deadline).__await__()

    async def __aenter__(self) -> PooledConnection[C]:
        # _checkout inlined, and the opening only awaited when it is needed:
        # two coroutines fewer per call on the hot path.
        manager = self._manager
        deadline = self._deadline
        if manager.state is not ResourceState.OPEN:
            await manager._ensure_open(deadline)
        timeout = (deadline or _NEVER).cap(manager.options.acquire_timeout) or 0.0
        try:
            conn = await manager._pool.acquire(timeout)
        except PoolExhaustedError:
            raise
        except TimeoutError:
            raise manager._not_opened(timeout) from None
        self._conn = conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        manager = self._manager
        clean = (exc is None or manager._leaves_clean(exc)) and not conn.needs_reset
        if clean and not self._stateless and manager.options.reset_session:
            clean = False  # trusted code's connections are always reset
        manager.release(conn, clean=clean)
