"""Seed 002's ``CachedDatabaseOperations``, rebuilt on iogate.

The seed decorates a method with aiocache's ``@cached(ttl=300)`` and
invalidates by deleting ``get_post_by_id_cached:{post_id}`` from Redis. Here
the same method and the same key work with iogate's ``cached``: the cache is
the instance's own (``database=lambda self: self.cache``), in memory by
default or in Redis when given a URL, concurrent misses of one post load it
once, and a Redis outage only costs cache hits, never an error.

Run: ``python examples/cached_posts.py [redis://127.0.0.1:6379/15]``
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from iogate.backends.base import AsyncDatabaseManager
from iogate.backends.sqlite import AsyncSQLiteManager
from iogate.cache import Cache, cached


class PostsDatabase:
    """The seed's ``LinkedInPostsDatabase``, reduced to what the cache needs."""

    def __init__(self, manager: AsyncDatabaseManager) -> None:
        self.manager = manager
        self.reads = 0

    async def create_schema(self) -> None:
        result = await self.manager.execute_query(
            "CREATE TABLE IF NOT EXISTS posts (id TEXT PRIMARY KEY, title TEXT NOT NULL)"
        )
        if not result.success:
            raise RuntimeError(result.error)

    async def save_post(self, post_id: str, title: str) -> None:
        result = await self.manager.execute_query(
            "INSERT INTO posts (id, title) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET title = excluded.title",
            {"1": post_id, "2": title},
        )
        if not result.success:
            raise RuntimeError(result.error)

    async def get_post_by_id(self, post_id: str) -> dict[str, Any] | None:
        self.reads += 1
        result = await self.manager.execute_query(
            "SELECT id, title FROM posts WHERE id = ?", {"1": post_id}
        )
        if not result.success:
            raise RuntimeError(result.error)
        return result.data[0] if result.data else None


class CachedDatabaseOperations:
    def __init__(self, database: PostsDatabase, cache: Cache) -> None:
        self.database = database
        self.cache = cache

    @cached(ttl=300, database=lambda self: self.cache)  # Cache for 5 minutes
    async def get_post_by_id_cached(self, post_id: str) -> dict[str, Any] | None:
        """Cached version of get_post_by_id"""
        return await self.database.get_post_by_id(post_id)

    async def invalidate_post_cache(self, post_id: str) -> None:
        """Invalidate cache for a specific post"""
        cache_key = f"get_post_by_id_cached:{post_id}"
        await self.cache.delete(cache_key)


async def main(cache_url: str | None = None, directory: Path | None = None) -> dict[str, Any]:
    """Load, hit, update + invalidate, reload; returns what happened."""
    with tempfile.TemporaryDirectory() as scratch:
        path = (directory or Path(scratch)) / "posts.db"
        async with AsyncSQLiteManager(str(path)) as manager, Cache(cache_url) as cache:
            database = PostsDatabase(manager)
            await database.create_schema()
            await database.save_post("p1", "Hello")
            ops = CachedDatabaseOperations(database, cache)

            first = await asyncio.gather(*(ops.get_post_by_id_cached("p1") for _ in range(20)))
            await database.save_post("p1", "Hello, edited")
            stale = await ops.get_post_by_id_cached("p1")
            await ops.invalidate_post_cache("p1")
            fresh = await ops.get_post_by_id_cached("p1")
            await ops.invalidate_post_cache("p1")
            return {
                "first": first[0],
                "stale": stale,
                "fresh": fresh,
                "database_reads": database.reads,
                "cache": cache.get_stats(),
            }


if __name__ == "__main__":
    outcome = asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
    for name, value in outcome.items():
        print(f"{name:>15}: {value}")
