"""A bounded connection pool with first-come-first-served hand-off.

Why not the driver's pool: asyncpg's pool lets a task that releases a
connection take it straight back on its next acquire, ahead of tasks that
have been waiting longer; at concurrency 50 on 10 connections that pushes p99
to ~30 ms against a p50 of ~1 ms. Here a released connection goes to the
oldest waiter directly (the releasing task cannot overtake it), and a caller
that finds no idle connection and no free capacity queues behind everyone
who came before.

The pool knows nothing about the driver: it is given ``connect`` and
``close`` callables. Every acquire is bounded by a timeout; release is
synchronous bookkeeping, so a cancelled caller can never leave a connection
checked out. Connections idle longer than ``max_idle_time`` or older than
``max_lifetime`` are closed instead of being handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from iogate.core import events
from iogate.core.errors import ClosedError, PoolExhaustedError
from iogate.core.events import PoolEvent

__all__ = ["Pool", "PooledConnection"]

logger = logging.getLogger("iogate.pool")

C = TypeVar("C")


@dataclass(slots=True, eq=False)
class PooledConnection(Generic[C]):
    """A driver connection plus the pool's bookkeeping and a per-connection cache."""

    raw: C
    created_at: float
    last_used: float
    cache: dict[str, Any] = field(default_factory=dict)


class Pool(Generic[C]):
    def __init__(
        self,
        *,
        connect: Callable[[], Awaitable[C]],
        close: Callable[[C], Awaitable[None]],
        min_size: int,
        max_size: int,
        max_idle_time: float,
        max_lifetime: float,
        clock: Callable[[], float] = time.monotonic,
        resource: str = "",
        backend: str = "",
    ) -> None:
        self.resource = resource
        self.backend = backend
        self._connect = connect
        self._close = close
        self.min_size = min_size
        self.max_size = max_size
        self._max_idle_time = max_idle_time
        self._max_lifetime = max_lifetime
        self._clock = clock
        self._idle: deque[PooledConnection[C]] = deque()
        # A waiter's future resolves to a connection, or to None meaning
        # "capacity was reserved for you: open a connection yourself".
        self._waiters: deque[asyncio.Future[PooledConnection[C] | None]] = deque()
        self._size = 0  # open connections plus connections being opened
        self._in_use = 0
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()

    # -- public API -------------------------------------------------------

    async def open(self) -> None:
        """Open ``min_size`` connections (errors propagate)."""
        while self._size < self.min_size:
            self._size += 1
            try:
                raw = await self._connect()
            except BaseException:
                self._size -= 1
                raise
            now = self._clock()
            self._idle.append(PooledConnection(raw, now, now))

    async def acquire(self, timeout: float) -> PooledConnection[C]:
        """A connection within ``timeout`` seconds, or PoolExhaustedError."""
        if self._closed:
            raise ClosedError("pool is closed")
        conn = self._take_idle()
        if conn is not None:
            self._report(0.0, acquired=True)
            return conn
        started = time.perf_counter()
        acquired = False
        try:
            if self._size < self.max_size and not self._waiters:
                self._size += 1
                conn = await self._open_reserved(timeout)
            else:
                conn = await self._wait(timeout)
            acquired = True
            return conn
        finally:
            self._report(time.perf_counter() - started, acquired=acquired)

    def _report(self, wait_s: float, *, acquired: bool) -> None:
        if self.resource and events.hooks:  # no event is built when nobody listens
            events.emit(PoolEvent(self.resource, self.backend, wait_s, acquired))

    def release(self, conn: PooledConnection[C], *, discard: bool = False) -> None:
        """Give ``conn`` back (synchronous, so it cannot be interrupted)."""
        self._in_use -= 1
        now = self._clock()
        if discard or self._closed or now - conn.created_at > self._max_lifetime:
            self._size -= 1
            self._close_soon(conn.raw)
            self._grant_capacity()
            return
        conn.last_used = now
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_use += 1
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def close(self) -> None:
        """Close idle connections now; in-use ones are closed on release."""
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ClosedError("pool was closed while waiting"))
        self._waiters.clear()
        idle = list(self._idle)
        self._idle.clear()
        self._size -= len(idle)
        await asyncio.gather(*(self._close_quietly(c.raw) for c in idle))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def stats(self) -> dict[str, int]:
        return {
            "size": self._size,
            "max_size": self.max_size,
            "in_use": self._in_use,
            "idle": len(self._idle),
            "waiting": sum(1 for w in self._waiters if not w.done()),
        }

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<Pool size={s['size']}/{s['max_size']} in_use={s['in_use']} "
            f"idle={s['idle']} waiting={s['waiting']}>"
        )

    # -- internals --------------------------------------------------------

    def _take_idle(self) -> PooledConnection[C] | None:
        now = self._clock()
        while self._idle:
            conn = self._idle.pop()  # most recently used: warm caches
            if (
                now - conn.last_used > self._max_idle_time
                or now - conn.created_at > self._max_lifetime
            ):
                self._size -= 1
                self._close_soon(conn.raw)
                continue
            self._in_use += 1
            return conn
        return None

    async def _open_reserved(self, timeout: float) -> PooledConnection[C]:
        """Open a connection for capacity already counted in ``_size``."""
        try:
            async with asyncio.timeout(timeout):
                raw = await self._connect()
        except BaseException:
            self._size -= 1
            self._grant_capacity()
            raise
        now = self._clock()
        self._in_use += 1
        return PooledConnection(raw, now, now)

    async def _wait(self, timeout: float) -> PooledConnection[C]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[PooledConnection[C] | None] = loop.create_future()
        self._waiters.append(waiter)
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                granted = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Granted just as we were cancelled or timed out: pass it on.
                granted = waiter.result()
                if granted is None:
                    self._size -= 1
                    self._grant_capacity()
                else:
                    self.release(granted)
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolExhaustedError(
                    f"no connection available within {timeout:.3g}s "
                    f"(all {self.max_size} in use, {len(self._waiters)} waiting)"
                ) from None
            raise
        if granted is None:
            remaining = max(0.001, timeout - (loop.time() - started))
            return await self._open_reserved(remaining)
        return granted

    def _grant_capacity(self) -> None:
        """Capacity freed up: let the oldest waiter open a connection."""
        if self._closed or self._size >= self.max_size:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._size += 1
                waiter.set_result(None)
                return

    def _close_soon(self, raw: C) -> None:
        task = asyncio.get_running_loop().create_task(self._close_quietly(raw))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _close_quietly(self, raw: C) -> None:
        try:
            await self._close(raw)
        except Exception:  # closing a broken connection may fail; it is gone either way
            logger.debug("closing a pooled connection failed", exc_info=True)
