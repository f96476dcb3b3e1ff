"""The auto-pipelined mode's one connection: made once, remade after a failure.

``PipelinedLink.conn`` is the live :class:`MultiplexedConnection` (or None);
the manager reads it directly on every command. When there is none, or it
failed, :meth:`PipelinedLink.connection` dials: one dial at a time, in a task
of its own bounded by ``connect_timeout`` (the TCP/TLS connect and the
``AUTH``/``SELECT`` handshake together). Every caller waits for it only as
long as its own deadline and ``acquire_timeout`` allow, and a caller that
gives up (either of them, or a cancellation) leaves the dial running for the
others: nobody waits on a lock past their deadline.

After a failed dial, callers fail fast for a short, growing backoff instead
of each paying a connect attempt (a cache in front of a dead Redis stays
fast).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from iogate.backends.redis.connection import MultiplexedConnection, copy_failure, dial
from iogate.backends.redis.endpoint import RedisEndpoint
from iogate.backends.redis.options import RedisOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    ClosedError,
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
)
from iogate.core.resource import PoolStats

__all__ = ["PipelinedLink"]

_BACKOFF_INITIAL = 0.05
_BACKOFF_MAX = 1.0


class PipelinedLink:
    """The shared connection of one manager, and its counters."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        options: RedisOptions,
        *,
        name: str,
        closed: Callable[[], bool],
    ) -> None:
        self.endpoint = endpoint
        self.options = options
        self.name = name
        self._owner_closed = closed  # the manager's state, read when a dial ends
        self.conn: MultiplexedConnection | None = None
        self._dialing: asyncio.Task[MultiplexedConnection] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._reconnects = 0
        self._batches = 0
        self._commands = 0

    async def connection(self, deadline: Deadline) -> MultiplexedConnection:
        """The live connection, or one being made, waited for within ``deadline``
        and ``acquire_timeout``."""
        conn = self.conn
        if conn is not None and conn.usable:
            return conn
        dialing = self._dialing
        if dialing is None:
            dialing = self._start_dial()
        if not dialing.done():
            acquire_timeout = self.options.acquire_timeout
            remaining = deadline.remaining()
            by_deadline = remaining is not None and remaining < acquire_timeout
            # asyncio.wait, unlike wait_for, never cancels the dial it waits on.
            await asyncio.wait((dialing,), timeout=remaining if by_deadline else acquire_timeout)
            if not dialing.done():
                where = self.endpoint.where()
                if by_deadline:
                    raise OperationTimeoutError(
                        f"{self.name}: the deadline passed while connecting to redis at "
                        f"{where} (connect_timeout {self.options.connect_timeout:g}s)"
                    )
                raise DatabaseConnectionError(
                    f"{self.name}: not connected to redis at {where} within "
                    f"acquire_timeout {acquire_timeout:g}s (still connecting)"
                )
        failure = dialing.exception()
        if isinstance(failure, IogateError):
            raise copy_failure(failure) from failure  # each caller its own traceback
        return dialing.result()

    def _start_dial(self) -> asyncio.Task[MultiplexedConnection]:
        if self._owner_closed():
            raise ClosedError(f"{self.name}: manager is closed")
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            raise DatabaseConnectionError(
                f"{self.name}: redis at {self.endpoint.where()} was unreachable moments ago"
            )
        conn = self.conn
        if conn is not None:  # keep the counters of the connection we replace
            self._batches += conn.batches
            self._commands += conn.commands
            self._reconnects += 1
            self.conn = None
        dialing = self._dialing = loop.create_task(self._dial_once(loop))
        # Retrieved here, so a dial that every caller gave up on logs nothing.
        dialing.add_done_callback(_retrieve)
        return dialing

    async def _dial_once(self, loop: asyncio.AbstractEventLoop) -> MultiplexedConnection:
        options = self.options
        try:
            conn = await dial(
                self.endpoint,
                connect_timeout=options.connect_timeout,
                command_timeout=options.command_timeout,
                name=self.name,
            )
        except IogateError:
            self._failures += 1
            backoff = min(_BACKOFF_INITIAL * 2 ** (self._failures - 1), _BACKOFF_MAX)
            self._retry_at = loop.time() + backoff
            raise
        finally:
            self._dialing = None
        if self._owner_closed():  # closed while dialing: not ours to keep
            await conn.aclose()
            raise ClosedError(f"{self.name}: manager is closed")
        self._failures = 0
        self.conn = conn
        return conn

    async def aclose(self) -> None:
        dialing, self._dialing = self._dialing, None
        if dialing is not None:
            dialing.cancel()
            await asyncio.gather(dialing, return_exceptions=True)
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.aclose()

    # -- stats ----------------------------------------------------------------------

    def pool_stats(self) -> PoolStats:
        """A pool of one connection; ``waiting`` counts the commands in flight."""
        conn = self.conn
        live = int(conn is not None and conn.usable)
        in_flight = len(conn.waiting) if conn is not None else 0
        busy = int(bool(live and in_flight))
        return {
            "size": live,
            "max_size": 1,
            "in_use": busy,
            "idle": live - busy,
            "waiting": in_flight,
        }

    def pool_details(self) -> dict[str, int]:
        conn = self.conn
        return {
            "connections": int(conn is not None and conn.usable),
            "in_flight": len(conn.waiting) if conn is not None else 0,
            "reconnects": self._reconnects,
            "commands": self._commands + (conn.commands if conn else 0),
            "writes": self._batches + (conn.batches if conn else 0),
        }


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
