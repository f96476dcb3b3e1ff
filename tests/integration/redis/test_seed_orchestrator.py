"""Seed 000's Redis example and its caching integration, run as written
through the orchestrator against the real Redis and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator, DatabaseType

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

orchestrator: AsyncOperationOrchestrator  # the seed's module-level global


# -- seed 000, "Caching Integration", verbatim ------------------------------------
async def get_user_with_cache(user_id: str):  # type: ignore[no-untyped-def]
    # Try cache first
    cache_result = await orchestrator.execute_database_operation(
        "redis_cache", f"user:{user_id}", {"operation": "get", "key": f"user:{user_id}"}
    )

    if cache_result.success and cache_result.data:
        return json.loads(cache_result.data)

    # Fetch from database
    db_result = await orchestrator.execute_database_operation(
        "main_db", "SELECT * FROM users WHERE id = $1", {"1": user_id}
    )

    if db_result.success:
        user_data = db_result.data[0]

        # Cache the result
        await orchestrator.execute_database_operation(
            "redis_cache",
            f"user:{user_id}",
            {"operation": "set", "key": f"user:{user_id}", "value": json.dumps(user_data)},
        )

        return user_data

    return None


# ---------------------------------------------------------------------------------


@pytest.fixture
async def users_dsn(postgres_url: str) -> AsyncIterator[str]:
    """A private schema holding a ``users`` table, so the seed's SQL runs unchanged."""
    schema = f"s_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"CREATE TABLE {schema}.users (id text PRIMARY KEY, name text)")
        separator = "&" if "?" in postgres_url else "?"
        yield f"{postgres_url}{separator}search_path={schema}"
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def test_get_user_with_cache_as_written(
    redis_url: str, users_dsn: str, postgres_url: str
) -> None:
    global orchestrator
    user_id = uuid.uuid4().hex
    orchestrator = AsyncOperationOrchestrator()
    async with orchestrator:
        await orchestrator.add_database_manager("main_db", DatabaseType.POSTGRESQL, users_dsn)
        await orchestrator.add_database_manager("redis_cache", DatabaseType.REDIS, redis_url)
        insert = await orchestrator.execute_database_operation(
            "main_db", "INSERT INTO users (id, name) VALUES ($1, $2)", {"1": user_id, "2": "Ada"}
        )
        assert insert.success, insert

        first: Any = await get_user_with_cache(user_id)
        assert first == {"id": user_id, "name": "Ada"}
        cached = await orchestrator.execute_database_operation(
            "redis_cache", f"user:{user_id}", {"operation": "get", "key": f"user:{user_id}"}
        )
        assert json.loads(cached.data) == first

        # The second call is served from Redis: change the row behind its back.
        await orchestrator.execute_database_operation(
            "main_db", "UPDATE users SET name = $1 WHERE id = $2", {"1": "Changed", "2": user_id}
        )
        assert await get_user_with_cache(user_id) == {"id": user_id, "name": "Ada"}
        assert (
            orchestrator.get_stats()["databases"]["redis_cache"]["count"] == 4
        )  # miss, set, check, hit

        await orchestrator.execute_database_operation(
            "redis_cache", f"user:{user_id}", {"operation": "delete", "key": f"user:{user_id}"}
        )
        health = await orchestrator.health_check()
        assert health["redis_cache"]["status"] == "up"
