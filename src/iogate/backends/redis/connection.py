"""One multiplexed Redis connection: many callers, replies matched in FIFO order.

Every command goes over one connection, an ``asyncio.Protocol`` with
hiredis's C reply parser. A command is appended to an outbox and a "waiting"
FIFO; the outbox is written once per event-loop tick, so commands issued
concurrently by many tasks leave in one ``write`` (one round trip for 50
GETs, not 50). Replies arrive in the order the commands were written, and
each one is handed to the head of the FIFO.

Why this is safe under cancellation (redis-py CVE-2023-28858/9 was a reply
handed to the wrong caller after a cancelled read): a slot is never removed
from the FIFO except by its own reply. A cancelled caller's future is merely
``done``; its reply still pops its slot and is dropped. No caller reads the
socket, so no cancelled read can leave the stream out of step. If it ever
could be out of step (a protocol error, a reply with no slot) or stops
answering (``command_timeout`` with no reply), the connection is aborted,
every waiter fails with a connection/timeout error, and the manager's next
command opens a fresh one.

:func:`dial` makes one: TCP or a Unix socket, TLS, then the ``AUTH`` and
``SELECT`` of the handshake, all within ``connect_timeout``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast

import hiredis

from iogate.backends.redis.endpoint import RedisEndpoint
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    ClosedError,
    DatabaseConnectionError,
    IogateError,
    OperationTimeoutError,
    tls_reason,
)

__all__ = ["MultiplexedConnection", "copy_failure", "dial", "wait_reply"]


class MultiplexedConnection(asyncio.Protocol):
    """One connection, many callers; replies matched to callers in FIFO order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, command_timeout: float) -> None:
        self._loop = loop
        self._command_timeout = command_timeout
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self._transport: asyncio.Transport | None = None
        # (future, number of replies it takes); a slot leaves only with its reply.
        self.waiting: deque[tuple[asyncio.Future[Any], int]] = deque()
        self._partial: list[Any] = []
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._last_progress = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self.failure: IogateError | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.batches = 0
        self.commands = 0

    @property
    def usable(self) -> bool:
        return self.failure is None and self._transport is not None

    # asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._last_progress = self._loop.time()
        reader = self._reader
        waiting = self.waiting
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError:
                self.abort(DatabaseConnectionError("redis protocol error; connection discarded"))
                return
            if reply is False:
                return
            if not waiting:
                self.abort(DatabaseConnectionError("reply with no caller; connection discarded"))
                return
            future, expected = waiting[0]
            if expected == 1:
                waiting.popleft()
                if not future.done():  # a cancelled caller's reply is dropped
                    future.set_result(reply)
                continue
            self._partial.append(reply)
            if len(self._partial) == expected:
                waiting.popleft()
                replies, self._partial = self._partial, []
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            self.failure = DatabaseConnectionError("connection to redis lost")
        self._fail_all(self.failure)
        if not self.closed.done():
            self.closed.set_result(None)

    # sending ----------------------------------------------------------------

    def send(self, packed: bytes, replies: int = 1) -> asyncio.Future[Any]:
        """Queue one packed command (or a block taking ``replies`` replies)."""
        if self.failure is not None:
            raise copy_failure(self.failure)
        future: asyncio.Future[Any] = self._loop.create_future()
        if not self.waiting:
            self._last_progress = self._loop.time()
            if self._watchdog is None:
                self._watchdog = self._loop.call_later(self._command_timeout, self._check)
        self.waiting.append((future, replies))
        self._outbox.append(packed)
        self.commands += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox or self._transport is None or self.failure is not None:
            return
        data = self._outbox[0] if len(self._outbox) == 1 else b"".join(self._outbox)
        self._outbox.clear()
        self.batches += 1
        self._transport.write(data)

    def _check(self) -> None:
        """Abort a connection that has stopped answering (no reply for a while)."""
        self._watchdog = None
        if not self.waiting or self.failure is not None:
            return
        idle = self._loop.time() - self._last_progress
        if idle >= self._command_timeout:
            self.abort(
                OperationTimeoutError(
                    f"no reply from redis within {self._command_timeout}s; connection discarded"
                )
            )
            return
        self._watchdog = self._loop.call_later(self._command_timeout - idle, self._check)

    # closing ----------------------------------------------------------------

    def abort(self, failure: IogateError) -> None:
        if self.failure is None:
            self.failure = failure
        self._fail_all(self.failure)
        if self._transport is not None:
            self._transport.abort()

    async def aclose(self) -> None:
        if self.failure is None:
            self.failure = ClosedError("redis manager closed")
        self._fail_all(self.failure)
        if self._transport is not None:
            self._transport.close()
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self.closed)
            except TimeoutError:
                self._transport.abort()

    def _fail_all(self, failure: IogateError) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._outbox.clear()
        self._partial = []
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(copy_failure(failure))


def copy_failure(failure: IogateError) -> IogateError:
    # Each waiter gets its own instance: tracebacks must not be shared.
    return type(failure)(str(failure))


async def wait_reply(future: asyncio.Future[Any], deadline: Deadline) -> Any:
    """Await a reply, failing it with a timeout when the deadline passes.

    One timer on the loop rather than ``asyncio.timeout``, which costs an
    object, an async context manager and a task cancel/uncancel per command.
    A timed-out slot stays in the FIFO until its reply comes (see above).
    """
    remaining = deadline.remaining()
    if remaining is None:
        return await future
    timer = future.get_loop().call_later(remaining, _expire, future)
    try:
        return await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(OperationTimeoutError("deadline passed waiting for redis"))


async def dial(
    endpoint: RedisEndpoint, *, connect_timeout: float, command_timeout: float, name: str
) -> MultiplexedConnection:
    """A connection with its handshake done, within ``connect_timeout``."""
    loop = asyncio.get_running_loop()

    def factory() -> MultiplexedConnection:
        return MultiplexedConnection(loop, command_timeout)

    where = endpoint.where()
    conn: MultiplexedConnection | None = None
    try:
        async with asyncio.timeout(connect_timeout):
            unix_path = endpoint.unix_path
            if unix_path is not None:
                _, conn = await loop.create_unix_connection(factory, unix_path)
            else:
                _, conn = await loop.create_connection(
                    factory, endpoint.host, endpoint.port, ssl=endpoint.tls
                )
            await _handshake(conn, endpoint, name)
    except TimeoutError:
        _discard(conn)
        raise DatabaseConnectionError(
            f"{name}: no connection to redis at {where} within {connect_timeout}s"
        ) from None
    except ssl.SSLError as exc:
        _discard(conn)
        raise DatabaseConnectionError(
            f"{name}: TLS with redis at {where} failed: {tls_reason(exc)}"
        ) from exc
    except OSError as exc:
        _discard(conn)
        raise DatabaseConnectionError(
            f"{name}: cannot connect to redis at {where}: "
            f"{endpoint.clean(exc.strerror or type(exc).__name__)}"
        ) from exc
    except BaseException:
        _discard(conn)
        raise
    return conn


async def _handshake(conn: MultiplexedConnection, endpoint: RedisEndpoint, name: str) -> None:
    for step in endpoint.handshake():
        reply = await conn.send(hiredis.pack_command(step))
        if isinstance(reply, hiredis.ReplyError):
            what = "authentication" if step[0] == "AUTH" else step[0]
            # The reply names no secret, but redact in case a server echoes one.
            raise DatabaseConnectionError(
                f"{name}: redis {what} failed: {endpoint.clean(str(reply))}"
            )


def _discard(conn: MultiplexedConnection | None) -> None:
    if conn is not None:
        conn.abort(DatabaseConnectionError("connection setup failed"))
