"""``RedisOptions``: how an ``AsyncRedisManager`` connects, waits and what it allows.

A frozen, keyword-only value object in the shape of httpx's ``Limits`` and
``Timeout``: the defaults are the ``DEFAULT_*`` constants below, every value
is checked once when it is built, and its repr names every field. The
gateway's settings build one from a config file; code that constructs a
manager by hand may pass one (``options=``) or the seed's keywords
(``max_connections=10``), which set the same fields.

This module imports no driver, so building options costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from iogate.core.errors import ConfigError

__all__ = [
    "DEFAULT_ACQUIRE_TIMEOUT",
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_REDIS_CONNECTIONS",
    "RedisOptions",
]

DEFAULT_REDIS_CONNECTIONS = 10
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_COMMAND_TIMEOUT = 5.0
DEFAULT_ACQUIRE_TIMEOUT = 5.0
DEFAULT_MAX_IN_FLIGHT = 100_000


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisOptions:
    """Settings of one Redis manager.

    ``auto_pipeline=True``: one multiplexed connection; commands issued
    together leave in one write. ``max_connections`` is then unused, and
    ``max_in_flight`` caps the commands waiting for a reply on it.
    ``auto_pipeline=False``: a pool of ``max_connections``, one command per
    connection round trip.

    ``connect_timeout`` bounds making a connection (TCP, TLS, ``AUTH``,
    ``SELECT``). ``acquire_timeout`` bounds a caller's wait for a
    connection: a free one from the pool, or the shared one being made.
    ``command_timeout`` bounds how long a connection may leave a command
    unanswered before it is discarded.

    ``read_only=True`` refuses every command that writes, before anything is
    sent (``forbidden_statement``): a read-only view of a shared Redis.
    """

    max_connections: int = DEFAULT_REDIS_CONNECTIONS
    auto_pipeline: bool = True
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    read_only: bool = False

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {self.max_connections}")
        for name in ("connect_timeout", "command_timeout", "acquire_timeout", "max_in_flight"):
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
