"""Client-side rate limits per resource, on the ``limits`` library.

``RateLimiter("100/second")`` uses a moving window in process memory;
``storage_uri="async+redis://127.0.0.1:6379/0"`` shares the window between
several processes (any async storage URI ``limits`` understands). A limited
call is refused at once with ``RateLimitedError`` carrying ``retry_after``:
callers (the gateway) answer 429 instead of queueing work.

A shared storage is an optimisation of the count, never a dependency: a call
to it is bounded by ``shared_timeout``, and when it fails (Redis down or
silent) the limiter counts in process memory instead, with one warning, and
tries the shared storage again after a backoff (0.5 s doubling to 5 s), with
one info line when it answers again. While it is down each process admits
the whole limit on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from iogate.core.errors import ConfigError, RateLimitedError

__all__ = ["DEFAULT_SHARED_TIMEOUT", "RateLimiter"]

logger = logging.getLogger("iogate.resilience")

# Seconds a call to a shared storage may take before the call is counted locally.
DEFAULT_SHARED_TIMEOUT = 0.25
_SHARED_RETRY_INITIAL = 0.5
_SHARED_RETRY_MAX = 5.0


class RateLimiter:
    """One limit (``"100/second"``, ``"5000/hour"``) for one resource."""

    def __init__(
        self,
        limit: str,
        *,
        name: str = "resource",
        storage_uri: str | None = None,
        shared_timeout: float = DEFAULT_SHARED_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            self.item: RateLimitItem = parse(limit)
        except ValueError:
            raise ConfigError(
                f"rate_limit {limit!r} is not a limit such as '100/second' or '10 per minute'"
            ) from None
        self.limit = limit
        self.name = name
        if shared_timeout <= 0:
            raise ConfigError(f"shared_timeout must be positive, got {shared_timeout}")
        self.shared_timeout = shared_timeout
        self._clock = clock
        try:
            storage = _storage(storage_uri, shared_timeout) if storage_uri else MemoryStorage()
            if not isinstance(storage, Storage):
                raise ConfigError(f"rate limit storage for {name!r} must be an async+ URI")
            self._storage: Storage = storage
        except Exception as exc:  # limits raises several types for a bad URI
            raise ConfigError(f"rate limit storage for {name!r} is not usable") from exc
        self._limiter = MovingWindowRateLimiter(self._storage)
        # A shared storage's stand-in while it is down: the same limit, counted here.
        self._local: MovingWindowRateLimiter | None = (
            None if isinstance(self._storage, MemoryStorage) else _memory_limiter()
        )
        self._shared_failures = 0  # consecutive; 0 while the shared storage answers
        self._retry_shared_at = 0.0
        self.refused = 0
        self.counted_locally = 0  # calls counted in memory because the shared storage failed

    def __repr__(self) -> str:
        return f"<RateLimiter {self.name!r} {self.limit!r} refused={self.refused}>"

    @property
    def shared(self) -> bool:
        """Whether the limit is counted in a storage shared with other processes."""
        return self._local is not None

    async def acquire(self) -> None:
        """Count one call, or raise ``RateLimitedError`` if over the limit."""
        limiter = self._limiter
        if self._local is None:
            try:
                allowed = await limiter.hit(self.item, self.name)
            except Exception:
                # Failing open: a broken limiter must not take the API down with it.
                return
        else:
            limiter, allowed = await self._hit_shared_or_local(self._local)
        if allowed:
            return
        self.refused += 1
        retry_after = 1.0
        try:
            stats = await limiter.get_window_stats(self.item, self.name)
            retry_after = max(0.001, stats.reset_time - time.time())
        except Exception:
            pass
        raise RateLimitedError(
            f"{self.name}: client-side rate limit {self.limit} reached",
            retry_after=round(retry_after, 3),
        )

    async def _hit_shared_or_local(
        self, local: MovingWindowRateLimiter
    ) -> tuple[MovingWindowRateLimiter, bool]:
        """One hit on the shared storage, or on ``local`` while it is down."""
        if self._shared_failures and self._clock() < self._retry_shared_at:
            self.counted_locally += 1
            return local, await local.hit(self.item, self.name)
        try:
            async with asyncio.timeout(self.shared_timeout):
                allowed = await self._limiter.hit(self.item, self.name)
        except Exception as exc:  # limits and redis-py raise many types; all mean "down"
            self._shared_failed(exc)
            self.counted_locally += 1
            return local, await local.hit(self.item, self.name)
        if self._shared_failures:
            logger.info("rate limit %r: shared storage answers again", self.name)
            self._shared_failures = 0
        return self._limiter, allowed

    def _shared_failed(self, exc: Exception) -> None:
        self._shared_failures += 1
        wait = min(_SHARED_RETRY_MAX, _SHARED_RETRY_INITIAL * 2 ** (self._shared_failures - 1))
        self._retry_shared_at = self._clock() + wait
        reason = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
        if self._shared_failures == 1:
            logger.warning(
                "rate limit %r: shared storage failed (%s); counting in this process "
                "until it answers",
                self.name,
                reason,
            )

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"limit": self.limit, "refused": self.refused}
        if self._local is not None:
            out["shared"] = True
            out["shared_available"] = self._shared_failures == 0
            out["counted_locally"] = self.counted_locally
        return out

    async def close(self) -> None:
        # The in-memory storage runs an expiry task; stop it with the manager.
        # A shared storage keeps its counts (other processes still use
        # them); only our client connection to it is closed.
        if self._local is not None:
            _stop_expiry(self._local.storage)
        if isinstance(self._storage, MemoryStorage):
            _stop_expiry(self._storage)
            return
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            await aclose()


def _memory_limiter() -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(MemoryStorage())


def _stop_expiry(storage: Any) -> None:
    timer = getattr(storage, "timer", None)
    if timer is not None and not timer.done():
        timer.cancel()


def _storage(uri: str, timeout: float) -> Any:
    if uri.startswith(("async+redis://", "async+rediss://", "async+redis+unix://")):
        # limits defaults to coredis for async Redis; iogate already ships
        # redis-py, so use that instead of pulling in a second client. Its
        # socket timeouts bound a dead server as asyncio.timeout does a silent one.
        return storage_from_string(
            uri,
            implementation="redispy",
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
    return storage_from_string(uri)
