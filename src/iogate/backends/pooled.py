"""What the network SQL managers (PostgreSQL, MySQL) share: iogate's pool.

A subclass gives the driver's ``connect``/``close``, a description of its
target for messages (never with a password), and its own ``release`` (how a
connection is judged clean and how it is reset differs per driver). This
class owns the pool, bounds every acquire, and keeps the background tasks
(resets, kills) that a cancelled caller must not interrupt.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from iogate.backends.base import AsyncDatabaseManager
from iogate.backends.pool import Pool, PooledConnection
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import DatabaseConnectionError, PoolExhaustedError

__all__ = ["PooledDatabaseManager"]

C = TypeVar("C")


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
        )
        self._background: set[asyncio.Task[None]] = set()

    @abc.abstractmethod
    async def _default_connect(self) -> C: ...

    @abc.abstractmethod
    def _target(self) -> str:
        """Where the pool connects, for messages (no password)."""

    @abc.abstractmethod
    def release(self, conn: PooledConnection[Any], *, clean: bool = True) -> None: ...

    def pool_stats(self) -> dict[str, int]:
        return self._pool.stats()

    def _renamed(self, name: str) -> None:
        self._pool.resource = name

    async def _open(self) -> None:
        await self._pool.open()

    async def _close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._pool.close()

    async def acquire(self, deadline: Deadline | None = None) -> PooledConnection[Any]:
        """Check out a pooled connection (pair with :meth:`release`)."""
        await self._ensure_open()
        timeout = (deadline or Deadline.never()).cap(self.options.acquire_timeout)
        try:
            return await self._pool.acquire(timeout or 0.0)
        except PoolExhaustedError:
            raise
        except TimeoutError:
            raise DatabaseConnectionError(
                f"cannot connect to {self._target()}: no answer within {timeout:.3g}s"
            ) from None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in a task of its own, awaited by ``close()``."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
