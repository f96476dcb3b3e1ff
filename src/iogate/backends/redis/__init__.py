"""Redis, with automatic pipelining (on by default) or a redis.asyncio pool.

The package, one idea a module:

- :mod:`.options` — ``RedisOptions`` and the ``DEFAULT_*`` constants
- :mod:`.endpoint` — the URL read once: where to dial, TLS, redaction
- :mod:`.connection` — the multiplexed connection (RESP over one socket)
- :mod:`.link` — that connection made once and remade after a failure
- :mod:`.resp` — key-value commands as RESP, raw replies as kv's data shapes
- :mod:`.pool` — the redis.asyncio blocking pool and its error map
- :mod:`.subscription` — pub/sub on a connection of its own
- :mod:`.manager` — ``AsyncRedisManager``, which puts them together
"""

from iogate.backends.redis.manager import AsyncRedisManager
from iogate.backends.redis.options import (
    DEFAULT_ACQUIRE_TIMEOUT,
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_REDIS_CONNECTIONS,
    RedisOptions,
)
from iogate.backends.redis.subscription import DEFAULT_PING_INTERVAL, RedisSubscription

__all__ = [
    "DEFAULT_ACQUIRE_TIMEOUT",
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_REDIS_CONNECTIONS",
    "AsyncRedisManager",
    "RedisOptions",
    "RedisSubscription",
]
