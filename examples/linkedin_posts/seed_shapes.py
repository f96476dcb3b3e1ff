"""Seed 002's remaining call shapes, each working as the seed wrote it.

The service itself does not need these (its managers already pool, retry
and break circuits), but code written against the seed keeps working:

* ``DatabaseConnectionPool(url, pool_size=...)`` handing out raw asyncpg
  connections, both ``async with pool.get_connection() as conn`` (which the
  seed wrote but its own class could not do) and ``await get_connection()``
  + ``release_connection``;
* ``ExternalAPISession(base_url, timeout=...)`` exposing a raw aiohttp
  ``.session`` (no retries, no breaker, no endpoint checks);
* ``circuit_breaker_api_call(fn, *args)`` and ``resilient_api_operation(fn, *args)``
  around a dedicated API function;
* ``@cached(ttl=300)`` on ``get_post_by_id_cached`` with the seed's
  invalidation key ``get_post_by_id_cached:{post_id}``.
"""

from __future__ import annotations

from typing import Any

from iogate import (
    Cache,
    DatabaseConnectionPool,
    ExternalAPISession,
    cached,
    circuit_breaker_api_call,
    resilient_api_operation,
)

from .database import LinkedInPostsDatabase
from .service import LinkedInPostsService

__all__ = ["CachedDatabaseOperations", "tour"]


class CachedDatabaseOperations:
    """The seed's class; the cache is the instance's own (memory or Redis)."""

    def __init__(self, database: LinkedInPostsDatabase, cache: Cache) -> None:
        self.database = database
        self.cache = cache

    @cached(ttl=300, database=lambda self: self.cache)  # Cache for 5 minutes
    async def get_post_by_id_cached(self, post_id: str) -> dict[str, Any] | None:
        """Cached version of get_post_by_id"""
        return await self.database.get_post_by_id(post_id)

    async def invalidate_post_cache(self, post_id: str) -> None:
        """Invalidate cache for a specific post"""
        await self.cache.delete(f"get_post_by_id_cached:{post_id}")


async def tour(
    service: LinkedInPostsService,
    *,
    database_url: str,
    linkedin_url: str,
    post_id: str,
    user_id: str,
    access_token: str,
) -> dict[str, Any]:
    """Run each seed shape once against ``post_id``; what each returned."""
    table = service.database.table
    pool = DatabaseConnectionPool(database_url, pool_size=2)
    await pool.initialize()
    try:
        async with pool.get_connection() as conn:
            row_count = await conn.fetchval(f'SELECT count(*) FROM "{table}"')
        conn = await pool.get_connection()
        try:
            content = await conn.fetchval(f'SELECT content FROM "{table}" WHERE id = $1', post_id)
        finally:
            await pool.release_connection(conn)
    finally:
        await pool.close()

    async with ExternalAPISession(linkedin_url, timeout=5.0) as session:
        async with session.session.get(
            f"/v2/people/{user_id}", headers={"Authorization": f"Bearer {access_token}"}
        ) as response:
            profile_status = response.status
            profile = await response.json()

    metrics = await circuit_breaker_api_call(
        service.linkedin.get_linkedin_analytics, post_id, access_token
    )
    hashtags = await resilient_api_operation(service.ai.generate_hashtags, content)

    async with Cache() as cache:
        ops = CachedDatabaseOperations(service.database, cache)
        first = await ops.get_post_by_id_cached(post_id)
        again = await ops.get_post_by_id_cached(post_id)
        await ops.invalidate_post_cache(post_id)
        cache_stats = cache.get_stats()

    return {
        "pool_row_count": row_count,
        "pool_content": content,
        "session_profile_status": profile_status,
        "session_profile": profile,
        "breaker_metrics": metrics,
        "resilient_hashtags": hashtags,
        "cached_same_post": first is not None and first == again,
        "cache_hits": cache_stats.get("hits"),
    }
