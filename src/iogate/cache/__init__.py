"""Cache-aside with single-flight loads, tags, and a cache that may be down.

``Cache`` stores orjson-serialised values in any key-value manager (the
in-process memory store by default, Redis when given a Redis manager or
URL). ``get_or_load(key, loader)`` returns the cached value or runs
``loader`` once, however many tasks miss the same key at the same time
(single-flight, per process): the first one loads, the others await it.

A cache is an optimisation, never a dependency: when the backend fails
(Redis down, a timeout), a lookup counts as a miss, a write is skipped, the
failure is counted in ``stats()`` and logged (once when it starts, once when
it ends), and the caller still gets the loader's value. Only the loader's
own exceptions reach the caller.

``@cached(ttl=..., key=..., database=..., tags=...)`` wraps an async
function or method. The default key is ``"{function name}:{arg}:{arg}"``
without ``self``, the key seed 002 invalidates
(``get_post_by_id_cached:{post_id}``), so keys are stored unprefixed unless
a ``namespace`` is given.
"""

from iogate.cache.decorator import CachedFunction, cached
from iogate.cache.instances import cache_for, default_cache, set_database_lookup
from iogate.cache.store import DEFAULT_CACHE_TTL, DEFAULT_TAG_PREFIX, Cache, CacheStats

__all__ = [
    "DEFAULT_CACHE_TTL",
    "DEFAULT_TAG_PREFIX",
    "Cache",
    "CacheStats",
    "CachedFunction",
    "cache_for",
    "cached",
    "default_cache",
    "set_database_lookup",
]
