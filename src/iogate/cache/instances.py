"""Which ``Cache`` a caller gets: one per manager, a process-wide default, a named database."""

from __future__ import annotations

import weakref
from collections.abc import Callable

from iogate.backends.base import AsyncDatabaseManager
from iogate.cache.store import Cache
from iogate.core.errors import ResourceNotFoundError

__all__ = ["cache_for", "default_cache", "named_database", "set_database_lookup"]

DatabaseLookup = Callable[[str], AsyncDatabaseManager]

# How ``@cached(database="NAME")`` finds the manager called NAME. The cache sits
# below the orchestrator and must not import it, so the orchestrator module
# installs its lookup (the current orchestrator's database) when it is imported.
_database_lookup: DatabaseLookup | None = None


def set_database_lookup(lookup: DatabaseLookup | None) -> None:
    """Where ``@cached(database="NAME")`` resolves NAME (the orchestrator sets it)."""
    global _database_lookup
    _database_lookup = lookup


def named_database(name: str) -> AsyncDatabaseManager:
    if _database_lookup is None:
        raise ResourceNotFoundError(
            f"cached(database={name!r}): no orchestrator to find it on; "
            "create an AsyncOperationOrchestrator first"
        )
    return _database_lookup(name)


_by_manager: weakref.WeakKeyDictionary[AsyncDatabaseManager, Cache] = weakref.WeakKeyDictionary()
_default: Cache | None = None


def default_cache() -> Cache:
    """The process-wide in-memory cache ``@cached`` uses when given no database."""
    global _default
    if _default is None:
        _default = Cache(name="default")
    return _default


def cache_for(manager: AsyncDatabaseManager) -> Cache:
    """The one Cache over ``manager`` (so single-flight spans all its users)."""
    cache = _by_manager.get(manager)
    if cache is None:
        cache = _by_manager[manager] = Cache(manager, name=manager.name)
    return cache
