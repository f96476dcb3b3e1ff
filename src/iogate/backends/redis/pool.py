"""The redis.asyncio side: a blocking pool, and redis-py's errors mapped at one edge.

``auto_pipeline=False`` uses redis.asyncio (hiredis parser) with a blocking
pool of ``max_connections``: one command per connection round trip, a caller
waiting at most ``acquire_timeout`` for a free connection. Subscriptions use
redis.asyncio too. Either way its exceptions become iogate errors in
:func:`call_redis_py` and nowhere else; no message carries the URL's password.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from iogate.backends.redis.endpoint import RedisEndpoint
from iogate.backends.redis.options import RedisOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    DatabaseConnectionError,
    DatabaseError,
    OperationTimeoutError,
    PoolExhaustedError,
    QueryError,
    tls_reason,
)

__all__ = ["BlockingPool", "call_redis_py", "pooled_client"]


class BlockingPool(aioredis.BlockingConnectionPool):
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


def pooled_client(endpoint: RedisEndpoint, options: RedisOptions) -> aioredis.Redis:
    """A client on a pool of ``max_connections`` (not connected yet).

    Waiting for a free connection is bounded by ``acquire_timeout``
    (redis-py's ``timeout``). Replies are raw: the response callbacks are
    removed, so :mod:`~iogate.backends.redis.resp` shapes them exactly as on
    the pipelined path.
    """
    pool = BlockingPool(
        max_connections=options.max_connections,
        timeout=options.acquire_timeout,  # type: ignore[arg-type]  # float works
        connection_class=endpoint.connection_class,
        **endpoint.connection_kwargs(options.connect_timeout, options.command_timeout),
    )
    client = aioredis.Redis(connection_pool=pool)
    client.response_callbacks.clear()
    return client


async def call_redis_py(
    awaitable: Awaitable[Any],
    deadline: Deadline | None,
    *,
    name: str,
    endpoint: RedisEndpoint,
    acquire_timeout: float,
) -> Any:
    """Await a redis.asyncio call within ``deadline``, mapping its exceptions."""
    try:
        remaining = deadline.remaining() if deadline is not None else None
        if remaining is None:
            return await awaitable
        async with asyncio.timeout(remaining):
            return await awaitable
    except redis_errors.AuthenticationError as exc:
        raise DatabaseConnectionError(f"{name}: redis authentication failed") from exc
    except redis_errors.MaxConnectionsError as exc:
        raise PoolExhaustedError(f"{name}: no redis connection available") from exc
    except redis_errors.ConnectionError as exc:
        if "No connection available" in str(exc):
            raise PoolExhaustedError(
                f"{name}: no redis connection within {acquire_timeout}s"
            ) from exc
        if isinstance(exc.__context__, ssl.SSLError):  # redis-py raises without "from"
            raise DatabaseConnectionError(
                f"{name}: TLS with redis at {endpoint.where()} failed: "
                f"{tls_reason(exc.__context__)}"
            ) from exc
        raise DatabaseConnectionError(
            f"{name}: redis at {endpoint.where()}: {endpoint.clean(str(exc))}"
        ) from exc
    except (redis_errors.TimeoutError, TimeoutError) as exc:
        raise OperationTimeoutError(f"{name}: redis did not answer in time") from exc
    except redis_errors.ResponseError as exc:
        raise QueryError(endpoint.clean(str(exc))) from exc
    except redis_errors.RedisError as exc:
        raise DatabaseError(f"{name}: redis error {type(exc).__name__}") from exc
    except OSError as exc:
        raise DatabaseConnectionError(
            f"{name}: redis at {endpoint.where()}: {type(exc).__name__}"
        ) from exc
