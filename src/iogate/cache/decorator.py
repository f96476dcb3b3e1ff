"""``@cached``: an async function or method whose results go through a ``Cache``."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar

from iogate.backends.base import AsyncDatabaseManager
from iogate.cache.instances import cache_for, default_cache, named_database
from iogate.cache.store import DEFAULT_CACHE_TTL, Cache

__all__ = ["CachedFunction", "cached"]

P = ParamSpec("P")
R = TypeVar("R")

CacheSource = Cache | AsyncDatabaseManager | str | Callable[[Any], Any] | None


class CachedFunction(Generic[P, R]):
    """An async function whose results are cached; also works as a method."""

    def __init__(
        self,
        func: Callable[P, Awaitable[R]],
        *,
        ttl: float | None,
        key: str | Callable[..., str] | None,
        database: CacheSource,
        tags: Iterable[str] | Callable[..., Iterable[str]],
    ) -> None:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@cached needs an async function, got {func!r}")
        functools.update_wrapper(self, func)
        self.__wrapped__ = func
        self._func = func
        self._signature = inspect.signature(func)
        parameters = list(self._signature.parameters)
        self._skip_first = bool(parameters) and parameters[0] in ("self", "cls")
        self.ttl = ttl
        self._key = key
        self._tags = tags
        self._source = database
        # A fixed cache is built now (no I/O until first use); callables and
        # orchestrator names are resolved per call.
        self.cache: Cache | None = None
        if isinstance(database, Cache):
            self.cache = database
        elif isinstance(database, AsyncDatabaseManager):
            self.cache = cache_for(database)
        elif isinstance(database, str) and "://" in database:
            self.cache = Cache(database, name=f"cache:{func.__name__}")

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        if instance is None:
            return self
        return types.MethodType(self, instance)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        cache = self._resolve(args)
        key = self.key_for(*args, **kwargs)
        tags = self._tags_for(args, kwargs)
        return await cache.get_or_load(
            key, lambda: self._func(*args, **kwargs), ttl=self.ttl, tags=tags
        )

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """The cache key a call with these arguments uses."""
        if callable(self._key):
            return self._key(*args, **kwargs)
        if isinstance(self._key, str):
            return self._key.format(**self._bind(args, kwargs))
        parts = [str(a) for a in (args[1:] if self._skip_first else args)]
        parts += [f"{k}={kwargs[k]}" for k in sorted(kwargs)]
        return ":".join([self._func.__name__, *parts])

    async def invalidate(self, *args: Any, **kwargs: Any) -> int:
        """Drop the entry a call with these arguments would read."""
        return await self._resolve(args).delete(self.key_for(*args, **kwargs))

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def _tags_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
        if callable(self._tags):
            return list(self._tags(*args, **kwargs))
        tags = list(self._tags)
        if not tags:
            return []
        arguments = self._bind(args, kwargs)
        return [tag.format(**arguments) for tag in tags]

    def _resolve(self, args: tuple[Any, ...]) -> Cache:
        if self.cache is not None:
            return self.cache
        source = self._source
        if source is None:
            return default_cache()
        if isinstance(source, str):  # a database name on the current orchestrator
            return cache_for(named_database(source))
        if not callable(source) or isinstance(source, Cache | AsyncDatabaseManager):
            raise TypeError(f"cached(database=...) cannot use {type(source).__name__}")
        resolved = source(args[0] if args else None)  # callable: given the instance
        if isinstance(resolved, Cache):
            return resolved
        if isinstance(resolved, AsyncDatabaseManager):
            return cache_for(resolved)
        raise TypeError(f"cached(database=...) callable returned {type(resolved).__name__}")


def cached(
    ttl: float | None = DEFAULT_CACHE_TTL,
    *,
    key: str | Callable[..., str] | None = None,
    database: CacheSource = None,
    tags: Iterable[str] | Callable[..., Iterable[str]] = (),
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    """Cache an async function's result for ``ttl`` seconds (seed 002's ``@cached``).

    ``key``: a format string over the arguments (``"post:{post_id}"``), a
    callable taking the arguments, or None for ``"name:arg:arg"``.
    ``database``: None (the in-memory default), a ``Cache``, a manager, a
    Redis URL, the name of a database on the current orchestrator, or a
    callable given the method's instance (``lambda self: self.cache``).
    ``tags``: format strings like ``"user:{user_id}"`` for ``invalidate_tag``.
    """

    def decorate(func: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        return CachedFunction(func, ttl=ttl, key=key, database=database, tags=tags)

    return decorate
