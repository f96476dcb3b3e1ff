"""``AsyncRedisManager``: Redis behind the seed's ``execute_query`` call shape.

Two connection modes (:class:`~iogate.backends.redis.options.RedisOptions`):

- ``auto_pipeline=True`` (default): every command goes over one multiplexed
  connection (:mod:`~iogate.backends.redis.connection`, kept by
  :mod:`~iogate.backends.redis.link`); commands issued in the same
  event-loop tick leave in one write.
- ``auto_pipeline=False``: a redis.asyncio blocking pool of
  ``max_connections`` (:mod:`~iogate.backends.redis.pool`).

Commands and replies are translated in :mod:`~iogate.backends.redis.resp`,
pub/sub lives in :mod:`~iogate.backends.redis.subscription`.

Deadlines. A call's ``deadline`` bounds everything it waits for: the
connection being made (TCP, TLS, then the ``AUTH`` and ``SELECT`` of the
handshake), the command, its reply. One dial at a time runs in a task of its
own, bounded by ``connect_timeout``; every caller waits for it only until its
own deadline or ``acquire_timeout``, whichever comes first, and one that gives
up leaves it running for the others. With no deadline a call is still
bounded: ``acquire_timeout`` for a connection, ``command_timeout`` for a
connection that stops answering. In the pooled mode redis.asyncio's
``socket_connect_timeout``/``socket_timeout`` are ``connect_timeout`` and
``command_timeout``, the pool's wait is ``acquire_timeout``, and a deadline
wraps the whole call (acquire, connect, command).

``read_only=True`` refuses every command that writes
(:func:`~iogate.backends.kv.refuse_writes`; raw commands against
:data:`~iogate.backends.redis.resp.READ_COMMANDS`) before anything is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

import hiredis
import redis.asyncio as aioredis

from iogate.backends.base import AsyncDatabaseManager, ManagerState, Transaction
from iogate.backends.kv import (
    Command,
    batch_result,
    check_read_only,
    check_unreserved,
    parse_command,
    refuse_writes,
)
from iogate.backends.redis.connection import wait_reply
from iogate.backends.redis.endpoint import RedisEndpoint
from iogate.backends.redis.link import PipelinedLink
from iogate.backends.redis.options import RedisOptions
from iogate.backends.redis.pool import call_redis_py, pooled_client
from iogate.backends.redis.resp import (
    READ_COMMANDS,
    REPLY_ERRORS,
    command_args,
    exec_replies,
    shape_or_error,
    shape_reply,
)
from iogate.backends.redis.subscription import (
    DEFAULT_PING_INTERVAL,
    RedisSubscription,
    subscription,
)
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    ClosedError,
    DatabaseError,
    ForbiddenStatementError,
    InvalidRequestError,
    IogateError,
    PoolExhaustedError,
    QueryError,
)
from iogate.core.params import Params
from iogate.core.resource import PoolStats, empty_pool_stats
from iogate.core.result import Result
from iogate.core.sqlguard import Access

__all__ = ["AsyncRedisManager"]


class AsyncRedisManager(AsyncDatabaseManager):
    """Redis behind the seed's ``execute_query(key, {"operation": ...})`` API.

    Settings come as ``options=RedisOptions(...)`` or as the seed's keywords
    (``max_connections=10``, ``auto_pipeline=False``, ...); a keyword given
    overrides the same field of ``options``. ``target`` is the URL with its
    password redacted.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        max_connections: int | None = None,
        *,
        name: str | None = None,
        options: RedisOptions | None = None,
        auto_pipeline: bool | None = None,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
        acquire_timeout: float | None = None,
        max_in_flight: int | None = None,
        read_only: bool | None = None,
    ) -> None:
        super().__init__(name=name)
        given = {
            "max_connections": max_connections,
            "auto_pipeline": auto_pipeline,
            "connect_timeout": connect_timeout,
            "command_timeout": command_timeout,
            "acquire_timeout": acquire_timeout,
            "max_in_flight": max_in_flight,
            "read_only": read_only,
        }
        overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        self.options = options = replace(options or RedisOptions(), **overrides)
        self._endpoint = RedisEndpoint(url)
        # Read on every command: plain attributes, not options lookups.
        self._auto_pipeline = options.auto_pipeline
        self._max_in_flight = options.max_in_flight
        self._read_only = options.read_only
        # auto-pipelining: the shared connection; pooled: the redis.asyncio client
        self._link = PipelinedLink(self._endpoint, options, name=self.name, closed=self._is_closed)
        self._client: aioredis.Redis | None = None

    def __repr__(self) -> str:
        options = self.options
        mode = "auto_pipeline" if options.auto_pipeline else f"pool={options.max_connections}"
        read_only = " read_only" if options.read_only else ""
        return (
            f"<AsyncRedisManager {self.name!r} {self.target} {mode}{read_only} "
            f"state={self.state.value}>"
        )

    def _renamed(self, name: str) -> None:
        self._link.name = name

    def _is_closed(self) -> bool:
        return self.state is ManagerState.CLOSED

    @property
    def target(self) -> str:
        """The URL, its password (and any secret query parameter) redacted."""
        return self._endpoint.target

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> None:
        if self._auto_pipeline:
            await self._link.connection(Deadline.never())
            return
        client = pooled_client(self._endpoint, self.options)
        try:
            await self._guard(client.ping())
        except BaseException:
            await client.aclose()
            await client.connection_pool.aclose()
            raise
        self._client = client

    async def _close(self) -> None:
        await self._link.aclose()
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
        if self._read_only:
            refuse_writes(command, self.name)
        if guard is not None:
            check_unreserved(command)  # untrusted: not iogate's own keys
        op = command.op
        try:
            if op == "pipeline" or op == "transaction":
                return batch_result(command, await self._run_batch(command, deadline))
            conn = self._link.conn  # only ever set in auto-pipelining mode
            if conn is not None and conn.failure is None:
                # The hot path, inlined: no extra coroutine per command
                # unless a deadline needs a timer.
                if len(conn.waiting) >= self._max_in_flight:
                    raise PoolExhaustedError(
                        f"{self.name}: {self._max_in_flight} commands already in flight"
                    )
                future = conn.send(hiredis.pack_command(command_args(command)))
                if deadline.expires_at is None:
                    reply = await future
                else:
                    reply = await wait_reply(future, deadline)
            else:
                reply = await self._run(command_args(command), deadline)
            return Result.ok(shape_reply(command, reply), operation=op)
        except IogateError as exc:
            return Result.from_exception(exc, operation=op)

    async def execute_command(self, *args: Any, deadline: Deadline | None = None) -> Any:
        """Send a raw command and return its raw reply (raises iogate errors).

        On a read-only manager only the commands in ``READ_COMMANDS`` are sent.
        """
        if self._read_only:
            self._refuse_raw_write(args)
        deadline = deadline or Deadline.never()
        await self._ensure_open(deadline)
        reply = await self._run(args, deadline)
        if isinstance(reply, REPLY_ERRORS):
            raise QueryError(str(reply))
        return reply

    def _refuse_raw_write(self, args: Sequence[Any]) -> None:
        verb = args[0] if args else ""
        if isinstance(verb, bytes | bytearray):
            verb = bytes(verb).decode("utf-8", errors="replace")
        verb = str(verb).upper()
        if verb not in READ_COMMANDS:
            raise ForbiddenStatementError(
                f"{self.name}: redis command {verb[:40]!r} is not a read; "
                "this database is read-only",
                kind=verb[:40].lower(),
            )

    async def _run(self, args: Sequence[Any], deadline: Deadline) -> Any:
        if not self._auto_pipeline:
            client = self._pooled_client()
            return await self._guard(
                client.execute_command(*args),  # type: ignore[no-untyped-call]
                deadline,
            )
        conn = self._link.conn
        if conn is None or not conn.usable:
            conn = await self._link.connection(deadline)
        if len(conn.waiting) >= self._max_in_flight:
            raise PoolExhaustedError(
                f"{self.name}: {self._max_in_flight} commands already in flight"
            )
        return await wait_reply(conn.send(hiredis.pack_command(tuple(args))), deadline)

    async def _run_batch(self, command: Command, deadline: Deadline) -> list[Any]:
        transaction = command.op == "transaction"
        commands = command.commands
        if not self._auto_pipeline:
            client = self._pooled_client()
            replies = await self._guard(self._pooled_batch(client, command), deadline)
        else:
            conn = self._link.conn
            if conn is None or not conn.usable:
                conn = await self._link.connection(deadline)
            blocks = [hiredis.pack_command(command_args(c)) for c in commands]
            if transaction:
                # MULTI ... EXEC leave in one write, contiguous, so nothing
                # from another caller can be interleaved in the transaction.
                blocks = [hiredis.pack_command(("MULTI",)), *blocks]
                blocks.append(hiredis.pack_command(("EXEC",)))
            raw = await wait_reply(conn.send(b"".join(blocks), len(blocks)), deadline)
            if len(blocks) == 1:  # a block of one reply is answered with that reply
                raw = [raw]
            replies = exec_replies(raw) if transaction else raw
        return [shape_or_error(c, r) for c, r in zip(commands, replies, strict=True)]

    async def _pooled_batch(self, client: aioredis.Redis, command: Command) -> list[Any]:
        async with client.pipeline(transaction=command.op == "transaction") as pipe:
            for sub in command.commands:
                pipe.execute_command(*command_args(sub))
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

    def subscribe(
        self, *channels: str, ping_interval: float = DEFAULT_PING_INTERVAL
    ) -> AbstractAsyncContextManager[RedisSubscription]:
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
        return subscription(
            self._endpoint,
            self.options,
            self._guard,
            channels,
            name=self.name,
            ping_interval=ping_interval,
        )

    # -- stats ----------------------------------------------------------------------

    def pool_stats(self) -> PoolStats:
        if not self._auto_pipeline:
            return empty_pool_stats(self.options.max_connections)
        return self._link.pool_stats()

    def pool_details(self) -> dict[str, int]:
        if not self._auto_pipeline:
            return {"max_connections": self.options.max_connections}
        return self._link.pool_details()

    # -- redis.asyncio calls (pooled mode, pub/sub) ------------------------------------

    async def _guard(self, awaitable: Awaitable[Any], deadline: Deadline | None = None) -> Any:
        """Await a redis.asyncio call, its exceptions mapped (pool.call_redis_py)."""
        return await call_redis_py(
            awaitable,
            deadline,
            name=self.name,
            endpoint=self._endpoint,
            acquire_timeout=self.options.acquire_timeout,
        )


@asynccontextmanager
async def _unsupported_transaction() -> AsyncIterator[NoReturn]:
    raise InvalidRequestError(
        "redis runs transactions as one operation (MULTI/EXEC in one write): "
        '{"operation": "transaction", "operations": [...]}'
    )
    yield  # pragma: no cover - unreachable, makes this a generator


if TYPE_CHECKING:
    from iogate.core.resource import Resource

    _: Resource = AsyncRedisManager("redis://localhost")
