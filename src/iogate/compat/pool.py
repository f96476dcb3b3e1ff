"""Seed 002's ``DatabaseConnectionPool``: raw asyncpg connections, pooled by iogate.

The seed writes ``async with self.pool.get_connection() as conn`` while its
``get_connection`` is a plain coroutine, which cannot work. Here
``get_connection()`` returns a handle that is both awaitable (then pair it
with ``release_connection``) and an async context manager (released on exit).
Connections handed out raw are always reset on release, since the caller may
have changed session state.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

import asyncpg

from iogate.backends.pool import PooledConnection
from iogate.backends.postgres import AsyncPostgreSQLManager
from iogate.core.config import DatabaseOptions
from iogate.core.errors import ClosedError, InvalidRequestError
from iogate.core.resource import PoolStats

__all__ = ["DatabaseConnectionPool"]


class DatabaseConnectionPool:
    def __init__(
        self,
        database_url: str,
        pool_size: int = 20,
        *,
        min_size: int = 5,
        command_timeout: float = 30.0,
        acquire_timeout: float = 5.0,
    ) -> None:
        self.database_url = database_url
        self.pool_size = pool_size
        self._manager = AsyncPostgreSQLManager(
            database_url,
            name="connection_pool",
            options=DatabaseOptions(
                min_connections=min(min_size, pool_size),
                max_connections=pool_size,
                statement_timeout=command_timeout,
                acquire_timeout=acquire_timeout,
            ),
        )
        self._checked_out: dict[int, PooledConnection[Any]] = {}
        self.pool: AsyncPostgreSQLManager | None = None

    def __repr__(self) -> str:
        return f"<DatabaseConnectionPool {self._manager.dsn} {self._manager.pool_stats()}>"

    async def initialize(self) -> None:
        await self._manager.initialize_pool()
        self.pool = self._manager

    async def close(self) -> None:
        await self._manager.close()
        self.pool = None

    async def __aenter__(self) -> DatabaseConnectionPool:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def get_connection(self) -> _ConnectionHandle:
        """``await pool.get_connection()`` or ``async with pool.get_connection() as conn``."""
        return _ConnectionHandle(self)

    async def release_connection(self, conn: asyncpg.Connection) -> None:
        pooled = self._checked_out.pop(id(conn), None)
        if pooled is None:
            raise InvalidRequestError("that connection was not acquired from this pool")
        self._manager.release(pooled, clean=False)

    async def _acquire(self) -> asyncpg.Connection:
        if self.pool is None:
            raise ClosedError("DatabaseConnectionPool is not initialized: await initialize()")
        pooled = await self._manager.acquire()
        self._checked_out[id(pooled.raw)] = pooled
        raw: asyncpg.Connection = pooled.raw
        return raw

    def stats(self) -> PoolStats:
        return self._manager.pool_stats()


class _ConnectionHandle:
    def __init__(self, pool: DatabaseConnectionPool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    def __await__(self) -> Generator[Any, None, asyncpg.Connection]:
        return self._pool._acquire().__await__()

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._pool._acquire()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            await self._pool.release_connection(self._conn)
            self._conn = None
