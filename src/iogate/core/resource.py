"""What every resource iogate manages has in common: the ``Resource`` protocol.

A resource is a database manager (PostgreSQL, SQLite, MySQL/MariaDB, Redis,
memory) or an API manager. The gateway, the metrics collector, ``iogate
check`` and the orchestrator talk to every one of them through this protocol
only, never through ``getattr``/``hasattr`` probes; mypy checks that each
manager satisfies it (``tests/typing``).

The vocabularies shared by stats, events, metrics and ``/ready`` are enums
here: :class:`ResourceState`, :class:`Kind`, and the fixed key set of
:class:`PoolStats`.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, Protocol, TypedDict

__all__ = [
    "Health",
    "Kind",
    "PoolStats",
    "Resource",
    "ResourceState",
    "empty_pool_stats",
]


class ResourceState(enum.Enum):
    """Lifecycle of a resource: opened once, closed once, never reopened."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Kind(enum.StrEnum):
    """What an operation ran against (the ``kind`` of events and metrics)."""

    DATABASE = "database"
    API = "api"
    CACHE = "cache"
    OPERATION = "operation"


class PoolStats(TypedDict):
    """Connections of one resource, the same keys for every backend.

    ``size``/``max_size`` count connections (open / allowed), ``in_use`` and
    ``idle`` split ``size``, ``waiting`` counts callers (or, for a multiplexed
    connection, requests in flight). A backend without a pool reports what
    it has (a Redis auto-pipelined connection is a pool of one).
    """

    size: int
    max_size: int
    in_use: int
    idle: int
    waiting: int


def empty_pool_stats(max_size: int = 0) -> PoolStats:
    return PoolStats(size=0, max_size=max_size, in_use=0, idle=0, waiting=0)


class Health(NamedTuple):
    """What ``/ready`` and the metrics need to know without a round trip."""

    state: ResourceState
    # "closed" | "open" | "half_open" from the circuit breaker, "disabled"
    # when the resource has none.
    breaker: str


class Resource(Protocol):
    """The surface every manager offers (checked by mypy, not at run time)."""

    @property
    def name(self) -> str: ...

    @property
    def backend(self) -> str:
        """``postgresql``, ``sqlite``, ``mysql``, ``redis``, ``memory``, ``http``."""
        ...

    @property
    def kind(self) -> Kind: ...

    @property
    def state(self) -> ResourceState: ...

    @property
    def target(self) -> str:
        """Where it points (DSN, URL, path) with every password redacted."""
        ...

    async def open(self) -> None:
        """Open it; idempotent; a closed resource raises ``ClosedError``."""
        ...

    async def close(self) -> None:
        """Close it; idempotent."""
        ...

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise an iogate error unless it answers within ``timeout`` seconds."""
        ...

    def get_stats(self) -> dict[str, Any]:
        """Counters and latency quantiles, plus ``pool`` (:class:`PoolStats`)."""
        ...

    def pool_stats(self) -> PoolStats: ...

    def health(self) -> Health: ...
