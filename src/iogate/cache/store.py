"""``Cache``: cache-aside with single-flight loads and tags over a key-value manager."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import orjson

from iogate.backends.base import AsyncDatabaseManager
from iogate.backends.kv import RESERVED_PREFIX
from iogate.core.jsonable import jsonable
from iogate.core.result import Result

__all__ = ["DEFAULT_CACHE_TTL", "DEFAULT_TAG_PREFIX", "Cache", "CacheStats", "manager_for"]

logger = logging.getLogger("iogate.cache")

DEFAULT_CACHE_TTL = 300.0
# Under the reserved prefix: a gateway key without admin cannot touch tag sets.
DEFAULT_TAG_PREFIX = f"{RESERVED_PREFIX}tag:"

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    coalesced: int = 0  # callers that awaited another caller's load
    errors: int = 0  # backend failures absorbed (lookups, writes, invalidations)

    def snapshot(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "loads": self.loads,
            "coalesced": self.coalesced,
            "errors": self.errors,
        }


class Cache:
    """Cache-aside over a key-value manager (memory by default)."""

    def __init__(
        self,
        database: AsyncDatabaseManager | str | None = None,
        *,
        name: str = "cache",
        default_ttl: float | None = DEFAULT_CACHE_TTL,
        namespace: str = "",
        tag_prefix: str = DEFAULT_TAG_PREFIX,
    ) -> None:
        self.name = name
        self.default_ttl = default_ttl
        self.namespace = namespace
        self.tag_prefix = tag_prefix
        self._owns_manager = not isinstance(database, AsyncDatabaseManager)
        self.manager = manager_for(database, name)
        self.stats = CacheStats()
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._degraded = False

    def __repr__(self) -> str:
        return (
            f"<Cache {self.name!r} backend={self.manager.backend} "
            f"state={self.manager.state.value} {self.stats.snapshot()}>"
        )

    @property
    def backend(self) -> str:
        return self.manager.backend

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel pending loads; close the manager if this cache created it."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_manager:
            await self.manager.close()

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise an iogate error unless the backend answers (for ``/ready``)."""
        await self.manager.ping(timeout)

    def get_stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "degraded": self._degraded,
            **self.stats.snapshot(),
        }

    # -- operations ---------------------------------------------------------------------

    async def get(self, key: str) -> Any:
        """The cached value, or None on a miss (or when the backend fails)."""
        _, value = await self._lookup(key)
        return value

    async def set(
        self, key: str, value: Any, *, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> bool:
        """Store ``value``; False when the backend failed (counted, logged)."""
        ttl = self.default_ttl if ttl is None else ttl
        full = self.namespace + key
        data = orjson.dumps(value, default=jsonable, option=orjson.OPT_NON_STR_KEYS).decode()
        entry: dict[str, Any] = {"operation": "set", "key": full, "value": data}
        if ttl is not None:
            entry["ttl"] = ttl
        tag_list = list(tags)
        if not tag_list:
            return self._ok(await self.manager.execute_query(full, entry))
        operations = [entry]
        for tag in tag_list:
            tag_key = self._tag_key(tag)
            operations.append({"operation": "sadd", "key": tag_key, "member": full})
            if ttl is not None:
                # The tag's set lives as long as its longest-lived entry:
                # NX sets a TTL on a new set, GT only ever extends it.
                operations.append({"operation": "expire", "key": tag_key, "ttl": ttl, "nx": True})
                operations.append({"operation": "expire", "key": tag_key, "ttl": ttl, "gt": True})
        return self._ok(
            await self.manager.execute_query(
                full, {"operation": "pipeline", "operations": operations}
            )
        )

    async def delete(self, *keys: str) -> int:
        """Remove entries; the number removed (0 when the backend failed)."""
        if not keys:
            return 0
        full = [self.namespace + key for key in keys]
        result = await self.manager.execute_query(full[0], {"operation": "delete", "keys": full})
        return int(result.data) if self._ok(result) else 0

    async def invalidate_tag(self, tag: str) -> int:
        """Remove every entry stored with ``tag``; the number removed."""
        tag_key = self._tag_key(tag)
        members = await self.manager.execute_query(
            tag_key, {"operation": "smembers", "key": tag_key}
        )
        if not self._ok(members):
            return 0
        result = await self.manager.execute_query(
            tag_key, {"operation": "delete", "keys": [*members.data, tag_key]}
        )
        if not self._ok(result):
            return 0
        return max(0, int(result.data) - 1) if members.data else 0

    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[R]],
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        encode: Callable[[R], Any] | None = None,
        decode: Callable[[Any], R | None] | None = None,
    ) -> R:
        """The cached value, or ``loader()``'s, stored; one load per key at a time.

        Without ``encode``/``decode`` a loaded value is stored as it is and a
        hit returns its JSON form. ``encode(value)`` gives what to store
        instead, None to store nothing (a failure worth retrying);
        ``decode(entry)`` gives the value back from a stored entry, None to
        count it as a miss (loaded again and overwritten).
        """
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._lookup_or_load(key, loader, ttl, tuple(tags), encode, decode)
            )
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._forget, key))
        else:
            self.stats.coalesced += 1
        # Shielded: one caller giving up must not cancel the others' load.
        result: R = await asyncio.shield(task)
        return result

    # -- internals ------------------------------------------------------------------------

    async def _lookup_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[R]],
        ttl: float | None,
        tags: tuple[str, ...],
        encode: Callable[[R], Any] | None,
        decode: Callable[[Any], R | None] | None,
    ) -> R:
        hit, value = await self._lookup(key, decode)
        if hit:
            cached_value: R = value
            return cached_value
        self.stats.loads += 1
        loaded = await loader()
        if encode is None:
            await self.set(key, loaded, ttl=ttl, tags=tags)
        else:
            entry = encode(loaded)
            if entry is not None:
                await self.set(key, entry, ttl=ttl, tags=tags)
        return loaded

    def _forget(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: a loader error nobody awaited is not "lost"

    async def _lookup(
        self, key: str, decode: Callable[[Any], Any] | None = None
    ) -> tuple[bool, Any]:
        full = self.namespace + key
        result = await self.manager.execute_query(full, {"operation": "get", "key": full})
        if not self._ok(result) or result.data is None:
            self.stats.misses += 1
            return False, None
        try:
            value = orjson.loads(result.data)
        except orjson.JSONDecodeError:
            # Not written by a Cache (or truncated): treat as a miss, overwrite on load.
            self._absorb(f"entry {full!r} is not JSON")
            self.stats.misses += 1
            return False, None
        if decode is not None:
            value = decode(value)
            if value is None:  # an entry of another shape: reloaded and overwritten
                self.stats.misses += 1
                return False, None
        self.stats.hits += 1
        return True, value

    def _tag_key(self, tag: str) -> str:
        return f"{self.tag_prefix}{self.namespace}{tag}"

    def _ok(self, result: Result) -> bool:
        if result.success:
            if self._degraded:
                self._degraded = False
                logger.info("cache %r is answering again", self.name)
            return True
        self._absorb(f"{result.error_type}: {result.error}")
        return False

    def _absorb(self, reason: str) -> None:
        self.stats.errors += 1
        if not self._degraded:
            self._degraded = True
            logger.warning("cache %r failed (%s); serving from the loader", self.name, reason)
        else:
            logger.debug("cache %r failed again (%s)", self.name, reason)


def manager_for(database: AsyncDatabaseManager | str | None, name: str) -> AsyncDatabaseManager:
    if isinstance(database, AsyncDatabaseManager):
        return database
    if database is None or database in ("memory://", "memory:"):
        from iogate.backends.memory import AsyncMemoryManager

        return AsyncMemoryManager(name=name)
    from iogate.backends.redis import AsyncRedisManager

    return AsyncRedisManager(database, name=name)
