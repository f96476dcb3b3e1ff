"""Pub/sub: a connection of its own, subscribed to channels for one block.

``AsyncRedisManager.subscribe(*channels)`` opens it (redis.asyncio's
``PubSub``) within ``connect_timeout``; ``RedisSubscription.get(timeout)``
waits at most ``timeout`` for a message and pings a connection that has been
quiet for ``ping_interval``, so a server that stops answering is found
within ``command_timeout`` rather than waited on for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from iogate.backends.redis.endpoint import RedisEndpoint
from iogate.backends.redis.options import RedisOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import OperationTimeoutError

__all__ = ["DEFAULT_PING_INTERVAL", "RedisSubscription", "subscription"]

# A subscription quiet this long is pinged (see RedisSubscription.get).
DEFAULT_PING_INTERVAL = 5.0

# Awaits a redis.asyncio call within a deadline, mapping its errors (pool.call_redis_py).
Call = Callable[[Awaitable[Any], Deadline], Awaitable[Any]]


class RedisSubscription:
    """The messages on the channels an ``AsyncRedisManager.subscribe`` block named."""

    def __init__(
        self,
        pubsub: PubSub,
        call: Call,
        *,
        name: str,
        where: str,
        command_timeout: float,
        ping_interval: float,
    ) -> None:
        self._pubsub = pubsub
        self._call = call
        self._name = name
        self._where = where
        self._command_timeout = command_timeout
        self.ping_interval = ping_interval
        loop = asyncio.get_running_loop()
        self._time = loop.time
        self._heard_at = loop.time()
        self._ping_sent_at: float | None = None
        self.received = 0

    def __repr__(self) -> str:
        return f"<RedisSubscription {self._name!r} received={self.received}>"

    async def get(self, timeout: float) -> tuple[str, str] | None:
        """The next ``(channel, message)``, or None when none came within ``timeout``.

        A connection quiet for ``ping_interval`` is pinged; one that then
        says nothing for ``command_timeout`` raises ``OperationTimeoutError``.
        """
        command_timeout = self._command_timeout
        now = self._time()
        if self._ping_sent_at is None:
            if now - self._heard_at >= self.ping_interval:
                await self._call(self._pubsub.ping(), Deadline(command_timeout))
                self._ping_sent_at = now
        elif now - self._ping_sent_at > command_timeout:
            raise OperationTimeoutError(
                f"{self._name}: redis at {self._where} stopped answering on a subscription"
            )
        ends = now + timeout
        while True:  # until a message or the timeout: control replies do not count
            left = max(0.0, ends - self._time())
            message = await self._call(
                self._pubsub.get_message(timeout=left),
                Deadline(left + command_timeout),
            )
            if message is not None:
                self._heard_at = self._time()
                self._ping_sent_at = None
                if message.get("type") == "message":
                    self.received += 1
                    return str(message["channel"]), str(message["data"])
            if left <= 0:
                return None


@asynccontextmanager
async def subscription(
    endpoint: RedisEndpoint,
    options: RedisOptions,
    call: Call,
    channels: tuple[str, ...],
    *,
    name: str,
    ping_interval: float,
) -> AsyncIterator[RedisSubscription]:
    """A one-connection pool subscribed to ``channels``, closed (bounded) on exit."""
    pool = aioredis.ConnectionPool(
        max_connections=1,
        connection_class=endpoint.connection_class,
        **endpoint.connection_kwargs(options.connect_timeout, options.command_timeout),
    )
    pubsub = PubSub(pool, ignore_subscribe_messages=True)
    try:
        await call(pubsub.subscribe(*channels), Deadline(options.connect_timeout))
        yield RedisSubscription(
            pubsub,
            call,
            name=name,
            where=endpoint.where(),
            command_timeout=options.command_timeout,
            ping_interval=ping_interval,
        )
    finally:
        # Bounded: closing only drops the socket, but never wait on a dead peer.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(options.command_timeout):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            async with asyncio.timeout(options.command_timeout):
                await pool.aclose()
