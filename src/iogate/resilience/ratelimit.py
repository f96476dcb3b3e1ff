"""Client-side rate limits per resource, on the ``limits`` library.

``RateLimiter("100/second")`` uses a moving window in process memory;
``storage_uri="async+redis://127.0.0.1:6379/0"`` shares the window between
several processes (any async storage URI ``limits`` understands). A limited
call is refused at once with ``RateLimitedError`` carrying ``retry_after``:
callers (the gateway) answer 429 instead of queueing work.
"""

from __future__ import annotations

import time
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from iogate.core.errors import ConfigError, RateLimitedError

__all__ = ["RateLimiter"]


class RateLimiter:
    """One limit (``"100/second"``, ``"5000/hour"``) for one resource."""

    def __init__(
        self, limit: str, *, name: str = "resource", storage_uri: str | None = None
    ) -> None:
        try:
            self.item: RateLimitItem = parse(limit)
        except ValueError:
            raise ConfigError(
                f"rate_limit {limit!r} is not a limit such as '100/second' or '10 per minute'"
            ) from None
        self.limit = limit
        self.name = name
        try:
            storage = _storage(storage_uri) if storage_uri else MemoryStorage()
            if not isinstance(storage, Storage):
                raise ConfigError(f"rate limit storage for {name!r} must be an async+ URI")
            self._storage: Storage = storage
        except Exception as exc:  # limits raises several types for a bad URI
            raise ConfigError(f"rate limit storage for {name!r} is not usable") from exc
        self._limiter = MovingWindowRateLimiter(self._storage)
        self.refused = 0

    def __repr__(self) -> str:
        return f"<RateLimiter {self.name!r} {self.limit!r} refused={self.refused}>"

    async def acquire(self) -> None:
        """Count one call, or raise ``RateLimitedError`` if over the limit."""
        try:
            allowed = await self._limiter.hit(self.item, self.name)
        except Exception as exc:  # a shared storage that is down
            # Failing open: a broken limiter must not take the API down with it.
            del exc
            return
        if allowed:
            return
        self.refused += 1
        retry_after = 1.0
        try:
            stats = await self._limiter.get_window_stats(self.item, self.name)
            retry_after = max(0.001, stats.reset_time - time.time())
        except Exception:
            pass
        raise RateLimitedError(
            f"{self.name}: client-side rate limit {self.limit} reached",
            retry_after=round(retry_after, 3),
        )

    def snapshot(self) -> dict[str, Any]:
        return {"limit": self.limit, "refused": self.refused}

    async def close(self) -> None:
        # The in-memory storage runs an expiry task; stop it with the manager.
        # A shared storage keeps its counts (other processes still use
        # them); only our client connection to it is closed.
        if isinstance(self._storage, MemoryStorage):
            timer = self._storage.timer
            if timer is not None and not timer.done():
                timer.cancel()
            return
        client = getattr(getattr(self._storage, "bridge", None), "storage", None)
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            await aclose()


def _storage(uri: str) -> Any:
    if uri.startswith(("async+redis://", "async+rediss://")):
        # limits defaults to coredis for async Redis; iogate already ships
        # redis-py, so use that instead of pulling in a second client.
        return storage_from_string(uri, implementation="redispy")
    return storage_from_string(uri)
