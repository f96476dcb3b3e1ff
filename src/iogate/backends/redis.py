"""Redis, with automatic pipelining (on by default) or a redis.asyncio pool.

Automatic pipelining
--------------------
Every command goes over one multiplexed connection, an ``asyncio.Protocol``
with hiredis's C reply parser. A command is appended to an outbox and a
"waiting" FIFO; the outbox is written once per event-loop tick, so commands
issued concurrently by many tasks leave in one ``write`` (one round trip for
50 GETs, not 50). Replies arrive in the order the commands were written, and
each one is handed to the head of the FIFO.

Why this is safe under cancellation (redis-py CVE-2023-28858/9 was a reply
handed to the wrong caller after a cancelled read): a slot is never removed
from the FIFO except by its own reply. A cancelled caller's future is merely
``done``; its reply still pops its slot and is dropped. No caller reads the
socket, so no cancelled read can leave the stream out of step. If it ever
could be out of step (a protocol error, a reply with no slot) or stops
answering (``command_timeout`` with no reply), the connection is aborted,
every waiter fails with a connection/timeout error, and the next command
opens a fresh one.

``auto_pipeline=False`` uses redis.asyncio (hiredis parser) with a blocking
pool of ``max_connections`` instead: one command per connection round trip.

Deadlines. A call's ``deadline`` bounds everything it waits for: the
connection being made (TCP, TLS, then the ``AUTH`` and ``SELECT`` of the
handshake), the command, its reply. One dial at a time runs in a task of its
own, bounded by ``connect_timeout``; every caller waits for it only until its
own deadline, and one that gives up leaves it running for the others. With
no deadline a call is still bounded: ``connect_timeout`` for the connection,
``command_timeout`` for a connection that stops answering. In the pooled
mode redis.asyncio's ``socket_connect_timeout``/``socket_timeout`` are those
two, and a deadline wraps the whole call (acquire, connect, command).

TLS: a ``rediss://`` URL, configured with redis-py's own query parameters
(``ssl_ca_certs=/path/ca.pem``, ``ssl_cert_reqs=none|optional|required``,
``ssl_check_hostname``, ``ssl_certfile``/``ssl_keyfile`` for a client
certificate), so one URL means the same in both modes and in redis-py. The
certificate and host name are verified by default. The context is built
when the manager is created: a missing CA file is a ``ConfigError`` then.

Pub/sub: ``subscribe(*channels)`` opens a connection of its own (redis.asyncio's
``PubSub``), bounded by ``connect_timeout``; ``RedisSubscription.get(timeout)``
waits at most ``timeout`` for a message and pings a connection that has been
quiet for ``ping_interval``, so a server that stops answering is found within
``command_timeout`` rather than waited on for ever.

Driver exceptions are mapped to iogate errors here and nowhere else; no
message carries the URL's password.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn, cast

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.client import PubSub
from redis.asyncio.connection import (
    RedisSSLContext,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

from iogate.backends.base import AsyncDatabaseManager, ManagerState, Transaction
from iogate.backends.kv import (
    Command,
    batch_result,
    check_read_only,
    check_unreserved,
    parse_command,
)
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    ClosedError,
    ConfigError,
    DatabaseConnectionError,
    DatabaseError,
    InvalidRequestError,
    IogateError,
    OperationTimeoutError,
    PoolExhaustedError,
    QueryError,
    tls_reason,
)
from iogate.core.params import Params
from iogate.core.redact import redact_text, redact_url, url_password
from iogate.core.resource import PoolStats, empty_pool_stats
from iogate.core.result import Result
from iogate.core.sqlguard import Access

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_REDIS_CONNECTIONS",
    "AsyncRedisManager",
    "RedisSubscription",
]

DEFAULT_REDIS_CONNECTIONS = 10
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_COMMAND_TIMEOUT = 5.0
DEFAULT_MAX_IN_FLIGHT = 100_000
_TLS_QUERY_PARAMS = (
    "ssl_ca_certs",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "ssl_certfile",
    "ssl_keyfile",
)
# After a failed connect, commands fail fast for a while instead of each
# paying a connect attempt (a cache in front of a dead Redis stays fast).
_BACKOFF_INITIAL = 0.05
_BACKOFF_MAX = 1.0
# A subscription quiet this long is pinged (see RedisSubscription.get).
DEFAULT_PING_INTERVAL = 5.0


# -- commands and replies -------------------------------------------------------


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _args(command: Command) -> tuple[Any, ...]:
    """The RESP command for one (non-batch) Command."""
    op = command.op
    if op == "get":
        return ("GET", command.key)
    if op == "set":
        args: tuple[Any, ...] = ("SET", command.key, command.value)
        if command.ttl is not None:
            args += ("PX", _ms(command.ttl))
        return args + ((command.flag,) if command.flag else ())
    if op in ("delete", "exists", "mget"):
        return (_VERBS[op], *command.keys)
    if op == "expire":
        assert command.ttl is not None  # parse_command requires it
        return ("PEXPIRE", command.key, _ms(command.ttl)) + (
            (command.flag,) if command.flag else ()
        )
    if op in ("incr", "incrby"):
        return ("INCRBY", command.key, command.amount)
    if op == "mset":
        return ("MSET", *[part for pair in command.mapping for part in pair])
    if op == "hget":
        return ("HGET", command.key, command.value)
    if op == "hset":
        return ("HSET", command.key, *[part for pair in command.mapping for part in pair])
    if op == "lrange":
        return ("LRANGE", command.key, command.start, command.stop)
    if op == "publish":
        return ("PUBLISH", command.key, command.value)
    if op in ("hdel", "lpush", "rpush", "sadd", "srem"):
        return (op.upper(), command.key, *command.values)
    return (op.upper(), command.key)  # ttl, hgetall, smembers


_VERBS = {"delete": "DEL", "exists": "EXISTS", "mget": "MGET"}


_REPLY_ERRORS = (hiredis.ReplyError, redis_errors.ResponseError)  # a tuple checks faster


def _shape(command: Command, reply: Any) -> Any:
    """Raw RESP2 reply -> the data shape :mod:`iogate.backends.kv` promises."""
    if isinstance(reply, _REPLY_ERRORS):
        raise QueryError(str(reply))
    op = command.op
    if op == "set":
        return reply is not None
    if op == "mset":
        return True
    if op == "expire":
        return bool(reply)
    if op == "hgetall":
        return dict(zip(reply[::2], reply[1::2], strict=True))
    if op == "smembers":
        return sorted(reply)
    return reply


def _shape_or_error(command: Command, reply: Any) -> Any:
    try:
        return _shape(command, reply)
    except QueryError as exc:
        return exc


# -- the multiplexed connection -----------------------------------------------------


class _Multiplexed(asyncio.Protocol):
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
            raise _copy(self.failure)
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
                future.set_exception(_copy(failure))


def _copy(failure: IogateError) -> IogateError:
    # Each waiter gets its own instance: tracebacks must not be shared.
    return type(failure)(str(failure))


# -- the manager ----------------------------------------------------------------------


class AsyncRedisManager(AsyncDatabaseManager):
    """Redis behind the seed's ``execute_query(key, {"operation": ...})`` API.

    ``auto_pipeline=True`` (default): one multiplexed connection, concurrent
    commands written together (``max_connections`` is then unused, as with
    ioredis). ``auto_pipeline=False``: a redis.asyncio pool of
    ``max_connections``, waiting up to ``acquire_timeout`` for a free one.
    ``command_timeout`` bounds how long a connection may go without
    answering before it is discarded; a request ``deadline`` bounds a call.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        max_connections: int = DEFAULT_REDIS_CONNECTIONS,
        *,
        name: str | None = None,
        auto_pipeline: bool = True,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        acquire_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        super().__init__(name=name)
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {max_connections}")
        for label, value in (
            ("connect_timeout", connect_timeout),
            ("command_timeout", command_timeout),
            ("acquire_timeout", acquire_timeout),
            ("max_in_flight", max_in_flight),
        ):
            if value <= 0:
                raise ConfigError(f"{label} must be positive, got {value}")
        self.url = url
        self.max_connections = max_connections
        self.auto_pipeline = auto_pipeline
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.acquire_timeout = acquire_timeout
        self.max_in_flight = max_in_flight
        try:
            self._target = parse_url(url)
        except ValueError as exc:
            raise ConfigError(f"invalid redis url {redact_url(url)!r}: {exc}") from None
        self._secrets = [s for s in (url_password(url), self._target.get("password")) if s]
        self._tls = _tls_context(self._target, redact_url(url))
        # auto-pipelining state
        self._conn: _Multiplexed | None = None
        self._dialing: asyncio.Task[_Multiplexed] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._reconnects = 0
        self._batches = 0
        self._commands = 0
        # pooled state
        self._client: aioredis.Redis | None = None

    def __repr__(self) -> str:
        mode = "auto_pipeline" if self.auto_pipeline else f"pool={self.max_connections}"
        return (
            f"<AsyncRedisManager {self.name!r} {redact_url(self.url)} {mode} "
            f"state={self.state.value}>"
        )

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> None:
        if self.auto_pipeline:
            await self._connection(Deadline.never())
            return
        kwargs: dict[str, Any] = {
            k: v for k, v in self._target.items() if k != "connection_class"
        } | {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.command_timeout,
            "decode_responses": True,
            "encoding_errors": "replace",
        }
        connection_class = self._target.get("connection_class", aioredis.Connection)
        pool = _BlockingPool(
            max_connections=self.max_connections,
            timeout=self.acquire_timeout,  # type: ignore[arg-type]  # float works
            connection_class=connection_class,
            **kwargs,
        )
        client = aioredis.Redis(connection_pool=pool)
        # Raw replies, shaped by _shape exactly as on the pipelined path.
        client.response_callbacks.clear()
        try:
            await self._guard(client.ping())
        except BaseException:
            await client.aclose()
            await pool.aclose()
            raise
        self._client = client

    async def _close(self) -> None:
        dialing, self._dialing = self._dialing, None
        if dialing is not None:
            dialing.cancel()
            await asyncio.gather(dialing, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.aclose()

    # -- operations -----------------------------------------------------------------

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
        command = parse_command(query, params)
        if read_only or guard is Access.READ:
            check_read_only(command)
        if guard is not None:
            check_unreserved(command)  # untrusted: not iogate's own keys
        op = command.op
        try:
            if op == "pipeline" or op == "transaction":
                return batch_result(command, await self._run_batch(command, deadline))
            conn = self._conn  # only ever set in auto-pipelining mode
            if conn is not None and conn.failure is None:
                # The hot path, inlined: no extra coroutine per command
                # unless a deadline needs a timer.
                if len(conn.waiting) >= self.max_in_flight:
                    raise PoolExhaustedError(
                        f"{self.name}: {self.max_in_flight} commands already in flight"
                    )
                future = conn.send(hiredis.pack_command(_args(command)))
                if deadline.expires_at is None:
                    reply = await future
                else:
                    reply = await _wait(future, deadline)
            else:
                reply = await self._run(_args(command), deadline)
            return Result.ok(_shape(command, reply), operation=op)
        except IogateError as exc:
            return Result.from_exception(exc, operation=op)

    async def execute_command(self, *args: Any, deadline: Deadline | None = None) -> Any:
        """Send a raw command and return its raw reply (raises iogate errors)."""
        deadline = deadline or Deadline.never()
        await self._ensure_open(deadline)
        reply = await self._run(args, deadline)
        if isinstance(reply, hiredis.ReplyError | redis_errors.ResponseError):
            raise QueryError(str(reply))
        return reply

    async def _run(self, args: Sequence[Any], deadline: Deadline) -> Any:
        if not self.auto_pipeline:
            client = self._pooled_client()
            return await self._guard(
                client.execute_command(*args),  # type: ignore[no-untyped-call]
                deadline,
            )
        conn = self._conn
        if conn is None or not conn.usable:
            conn = await self._connection(deadline)
        if len(conn.waiting) >= self.max_in_flight:
            raise PoolExhaustedError(
                f"{self.name}: {self.max_in_flight} commands already in flight"
            )
        return await _wait(conn.send(hiredis.pack_command(tuple(args))), deadline)

    async def _run_batch(self, command: Command, deadline: Deadline) -> list[Any]:
        transaction = command.op == "transaction"
        commands = command.commands
        if not self.auto_pipeline:
            client = self._pooled_client()
            replies = await self._guard(self._pooled_batch(client, command), deadline)
        else:
            conn = self._conn
            if conn is None or not conn.usable:
                conn = await self._connection(deadline)
            blocks = [hiredis.pack_command(_args(c)) for c in commands]
            if transaction:
                # MULTI ... EXEC leave in one write, contiguous, so nothing
                # from another caller can be interleaved in the transaction.
                blocks = [hiredis.pack_command(("MULTI",)), *blocks]
                blocks.append(hiredis.pack_command(("EXEC",)))
            raw = await _wait(conn.send(b"".join(blocks), len(blocks)), deadline)
            if len(blocks) == 1:  # a block of one reply is answered with that reply
                raw = [raw]
            replies = _exec_replies(raw) if transaction else raw
        return [_shape_or_error(c, r) for c, r in zip(commands, replies, strict=True)]

    async def _pooled_batch(self, client: aioredis.Redis, command: Command) -> list[Any]:
        async with client.pipeline(transaction=command.op == "transaction") as pipe:
            for sub in command.commands:
                pipe.execute_command(*_args(sub))
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies

    def _pooled_client(self) -> aioredis.Redis:
        if self._client is None:
            raise ClosedError(f"{self.name}: manager is not open")
        return self._client

    def _transaction(
        self, *, read_only: bool, deadline: Deadline, guard: Access | None = None
    ) -> AbstractAsyncContextManager[Transaction]:
        return _unsupported_transaction()

    async def _ping(self) -> None:
        reply = await self._run(("PING",), Deadline.never())
        if reply != "PONG":
            raise DatabaseError(f"{self.name}: unexpected PING reply")

    # -- pub/sub --------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self, *channels: str, ping_interval: float = DEFAULT_PING_INTERVAL
    ) -> AsyncIterator[RedisSubscription]:
        """A connection of its own, subscribed to ``channels`` for the block.

        Connecting and subscribing take at most ``connect_timeout``; failures
        are ``DatabaseConnectionError`` or ``OperationTimeoutError``. After an
        error, subscribe again: pub/sub delivers only to whoever listens at
        the time, so messages published meanwhile are not seen.
        """
        if not channels:
            raise InvalidRequestError("subscribe needs at least one channel")
        if self.state is ManagerState.CLOSED:
            raise ClosedError(f"{self.name}: manager is closed")
        kwargs: dict[str, Any] = {
            k: v for k, v in self._target.items() if k != "connection_class"
        } | {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.command_timeout,
            "decode_responses": True,
            "encoding_errors": "replace",
        }
        pool = aioredis.ConnectionPool(
            max_connections=1,
            connection_class=self._target.get("connection_class", aioredis.Connection),
            **kwargs,
        )
        pubsub = PubSub(pool, ignore_subscribe_messages=True)
        try:
            await self._guard(pubsub.subscribe(*channels), Deadline(self.connect_timeout))
            yield RedisSubscription(self, pubsub, ping_interval=ping_interval)
        finally:
            # Bounded: closing only drops the socket, but never wait on a dead peer.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.command_timeout):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.command_timeout):
                    await pool.aclose()

    def pool_stats(self) -> PoolStats:
        if not self.auto_pipeline:
            return empty_pool_stats(self.max_connections)
        conn = self._conn
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
        if not self.auto_pipeline:
            return {"max_connections": self.max_connections}
        conn = self._conn
        return {
            "connections": int(conn is not None and conn.usable),
            "in_flight": len(conn.waiting) if conn is not None else 0,
            "reconnects": self._reconnects,
            "commands": self._commands + (conn.commands if conn else 0),
            "writes": self._batches + (conn.batches if conn else 0),
        }

    # -- connecting (auto-pipelining) ------------------------------------------------

    async def _connection(self, deadline: Deadline) -> _Multiplexed:
        """The live connection, or one being made, waited for within ``deadline``.

        One dial at a time, in a task of its own bounded by ``connect_timeout``
        (the TCP/TLS connect and the ``AUTH``/``SELECT`` handshake together).
        Every caller waits for it only as long as its own deadline allows, and
        a caller that gives up (deadline, cancellation) leaves the dial running
        for the others: nobody waits on a lock past their deadline.
        """
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        dialing = self._dialing
        if dialing is None:
            dialing = self._start_dial()
        if not dialing.done():
            # asyncio.wait, unlike wait_for, never cancels the dial it waits on.
            await asyncio.wait((dialing,), timeout=deadline.remaining())
            if not dialing.done():
                raise OperationTimeoutError(
                    f"{self.name}: the deadline passed while connecting to redis at "
                    f"{self._where()} (connect_timeout {self.connect_timeout:g}s)"
                )
        failure = dialing.exception()
        if isinstance(failure, IogateError):
            raise _copy(failure) from failure  # each caller its own traceback
        return dialing.result()

    def _start_dial(self) -> asyncio.Task[_Multiplexed]:
        if self.state is ManagerState.CLOSED:
            raise ClosedError(f"{self.name}: manager is closed")
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            raise DatabaseConnectionError(
                f"{self.name}: redis at {self._where()} was unreachable moments ago"
            )
        conn = self._conn
        if conn is not None:  # keep the counters of the connection we replace
            self._batches += conn.batches
            self._commands += conn.commands
            self._reconnects += 1
            self._conn = None
        dialing = self._dialing = loop.create_task(self._dial_once(loop))
        # Retrieved here, so a dial that every caller gave up on logs nothing.
        dialing.add_done_callback(_retrieve)
        return dialing

    async def _dial_once(self, loop: asyncio.AbstractEventLoop) -> _Multiplexed:
        try:
            conn = await self._dial(loop)
        except IogateError:
            self._failures += 1
            backoff = min(_BACKOFF_INITIAL * 2 ** (self._failures - 1), _BACKOFF_MAX)
            self._retry_at = loop.time() + backoff
            raise
        finally:
            self._dialing = None
        if self.state is ManagerState.CLOSED:  # closed while dialing: not ours to keep
            await conn.aclose()
            raise ClosedError(f"{self.name}: manager is closed")
        self._failures = 0
        self._conn = conn
        return conn

    async def _dial(self, loop: asyncio.AbstractEventLoop) -> _Multiplexed:
        target = self._target

        def factory() -> _Multiplexed:
            return _Multiplexed(loop, self.command_timeout)

        conn: _Multiplexed | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if target.get("connection_class") is UnixDomainSocketConnection:
                    _, conn = await loop.create_unix_connection(factory, target["path"])
                else:
                    _, conn = await loop.create_connection(
                        factory,
                        target.get("host", "localhost"),
                        target.get("port", 6379),
                        ssl=self._tls,
                    )
                await self._handshake(conn)
        except TimeoutError:
            await _discard(conn)
            raise DatabaseConnectionError(
                f"{self.name}: no connection to redis at {self._where()} "
                f"within {self.connect_timeout}s"
            ) from None
        except ssl.SSLError as exc:
            await _discard(conn)
            raise DatabaseConnectionError(
                f"{self.name}: TLS with redis at {self._where()} failed: {tls_reason(exc)}"
            ) from exc
        except OSError as exc:
            await _discard(conn)
            raise DatabaseConnectionError(
                f"{self.name}: cannot connect to redis at {self._where()}: "
                f"{self._clean(exc.strerror or type(exc).__name__)}"
            ) from exc
        except BaseException:
            await _discard(conn)
            raise
        return conn

    async def _handshake(self, conn: _Multiplexed) -> None:
        target = self._target
        steps: list[tuple[Any, ...]] = []
        if target.get("password"):
            user = target.get("username")
            steps.append(
                ("AUTH", user, target["password"]) if user else ("AUTH", target["password"])
            )
        if target.get("db"):
            steps.append(("SELECT", target["db"]))
        for step in steps:
            reply = await conn.send(hiredis.pack_command(step))
            if isinstance(reply, hiredis.ReplyError):
                what = "authentication" if step[0] == "AUTH" else step[0]
                # The reply names no secret, but redact in case a server echoes one.
                raise DatabaseConnectionError(
                    f"{self.name}: redis {what} failed: {self._clean(str(reply))}"
                )

    # -- errors ---------------------------------------------------------------------

    def _where(self) -> str:
        target = self._target
        if "path" in target:
            return str(target["path"])
        return f"{target.get('host', 'localhost')}:{target.get('port', 6379)}"

    def _clean(self, message: str) -> str:
        return redact_text(message, self._secrets)

    async def _guard(self, awaitable: Any, deadline: Deadline | None = None) -> Any:
        """Await a redis.asyncio call, mapping its exceptions at this edge."""
        try:
            remaining = deadline.remaining() if deadline is not None else None
            if remaining is None:
                return await awaitable
            async with asyncio.timeout(remaining):
                return await awaitable
        except redis_errors.AuthenticationError as exc:
            raise DatabaseConnectionError(f"{self.name}: redis authentication failed") from exc
        except redis_errors.MaxConnectionsError as exc:
            raise PoolExhaustedError(f"{self.name}: no redis connection available") from exc
        except redis_errors.ConnectionError as exc:
            if "No connection available" in str(exc):
                raise PoolExhaustedError(
                    f"{self.name}: no redis connection within {self.acquire_timeout}s"
                ) from exc
            if isinstance(exc.__context__, ssl.SSLError):  # redis-py raises without "from"
                raise DatabaseConnectionError(
                    f"{self.name}: TLS with redis at {self._where()} failed: "
                    f"{tls_reason(exc.__context__)}"
                ) from exc
            raise DatabaseConnectionError(
                f"{self.name}: redis at {self._where()}: {self._clean(str(exc))}"
            ) from exc
        except (redis_errors.TimeoutError, TimeoutError) as exc:
            raise OperationTimeoutError(f"{self.name}: redis did not answer in time") from exc
        except redis_errors.ResponseError as exc:
            raise QueryError(self._clean(str(exc))) from exc
        except redis_errors.RedisError as exc:
            raise DatabaseError(f"{self.name}: redis error {type(exc).__name__}") from exc
        except OSError as exc:
            raise DatabaseConnectionError(
                f"{self.name}: redis at {self._where()}: {type(exc).__name__}"
            ) from exc


class RedisSubscription:
    """The messages on the channels an ``AsyncRedisManager.subscribe`` block named."""

    def __init__(self, manager: AsyncRedisManager, pubsub: PubSub, *, ping_interval: float) -> None:
        self._manager = manager
        self._pubsub = pubsub
        self.ping_interval = ping_interval
        loop = asyncio.get_running_loop()
        self._time = loop.time
        self._heard_at = loop.time()
        self._ping_sent_at: float | None = None
        self.received = 0

    def __repr__(self) -> str:
        return f"<RedisSubscription {self._manager.name!r} received={self.received}>"

    async def get(self, timeout: float) -> tuple[str, str] | None:
        """The next ``(channel, message)``, or None when none came within ``timeout``.

        A connection quiet for ``ping_interval`` is pinged; one that then
        says nothing for ``command_timeout`` raises ``OperationTimeoutError``.
        """
        manager = self._manager
        now = self._time()
        if self._ping_sent_at is None:
            if now - self._heard_at >= self.ping_interval:
                await manager._guard(self._pubsub.ping(), Deadline(manager.command_timeout))
                self._ping_sent_at = now
        elif now - self._ping_sent_at > manager.command_timeout:
            raise OperationTimeoutError(
                f"{manager.name}: redis at {manager._where()} stopped answering on a subscription"
            )
        ends = now + timeout
        while True:  # until a message or the timeout: control replies do not count
            left = max(0.0, ends - self._time())
            message = await manager._guard(
                self._pubsub.get_message(timeout=left),
                Deadline(left + manager.command_timeout),
            )
            if message is not None:
                self._heard_at = self._time()
                self._ping_sent_at = None
                if message.get("type") == "message":
                    self.received += 1
                    return str(message["channel"]), str(message["data"])
            if left <= 0:
                return None


class _BlockingPool(aioredis.BlockingConnectionPool):
    """redis.asyncio's blocking pool, without its lost wake-up.

    A released connection wakes one waiter (``Condition.notify``). Before
    Python 3.13 a waiter cancelled just as it is woken takes that wake-up
    with it (CPython gh-112202), and the next waiter sleeps beside a free
    connection until its timeout: measured as 4 callers waiting 5 s in 1,000
    random cancellations (tests/faults/test_cancellations.py). A caller that
    leaves without a connection passes one wake-up on; a spare one is
    harmless, since every waiter checks for a free connection again.
    """

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            async with self._condition:
                self._condition.notify()
            raise


def _tls_context(target: Mapping[str, Any], where: str) -> ssl.SSLContext | None:
    """The client TLS context of a ``rediss://`` URL, its files read now.

    redis-py's ``RedisSSLContext`` builds it, so both modes share one reading
    of the ``ssl_*`` parameters. Its defaults: verify the certificate and the
    host name against the system CA store plus ``ssl_ca_certs``.
    """
    given = [key for key in _TLS_QUERY_PARAMS if key in target]
    if target.get("connection_class") is not SSLConnection:
        if given:
            raise ConfigError(f"redis url {where!r}: {', '.join(given)} need a rediss:// url (TLS)")
        return None
    try:
        return RedisSSLContext(
            keyfile=target.get("ssl_keyfile"),
            certfile=target.get("ssl_certfile"),
            cert_reqs=target.get("ssl_cert_reqs", "required"),
            ca_certs=target.get("ssl_ca_certs"),
            check_hostname=target.get("ssl_check_hostname", True),
        ).get()
    except redis_errors.RedisError as exc:  # an unknown ssl_cert_reqs
        raise ConfigError(f"redis url {where!r}: {exc}") from None
    except (OSError, ssl.SSLError) as exc:
        files = [str(target[k]) for k in ("ssl_ca_certs", "ssl_certfile") if k in target]
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"redis url {where!r}: cannot load {' / '.join(files) or 'TLS files'}: {reason}"
        ) from exc


async def _wait(future: asyncio.Future[Any], deadline: Deadline) -> Any:
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


def _exec_replies(raw: list[Any]) -> list[Any]:
    """[OK, QUEUED..., EXEC reply] -> the EXEC reply, or a QueryError."""
    result = raw[-1]
    if isinstance(result, hiredis.ReplyError):
        queued_errors = [r for r in raw[1:-1] if isinstance(r, hiredis.ReplyError)]
        raise QueryError(str(queued_errors[0] if queued_errors else result))
    if result is None:
        raise QueryError("transaction aborted")
    replies: list[Any] = result
    return replies


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _discard(conn: _Multiplexed | None) -> None:
    if conn is not None:
        conn.abort(DatabaseConnectionError("connection setup failed"))


@asynccontextmanager
async def _unsupported_transaction() -> AsyncIterator[NoReturn]:
    raise InvalidRequestError(
        "redis runs transactions as one operation (MULTI/EXEC in one write): "
        '{"operation": "transaction", "operations": [...]}'
    )
    yield  # pragma: no cover - unreachable, makes this a generator
