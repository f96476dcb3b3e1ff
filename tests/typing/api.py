"""The public API as a user writes it, checked by ``mypy --strict`` and never run.

``test_api_typing.py`` runs mypy on this file, so a change to a public
signature that breaks code written like this fails the tests. It uses only
names exported by ``iogate`` and ``iogate.errors``, and writes the calls the
way seeds 000 and 002 write them wherever a seed has one.

Every facade name is imported lazily at run time; the facade's
``TYPE_CHECKING`` imports are what give mypy the real types checked here.
"""

from __future__ import annotations

import json
from typing import Any, assert_type

import iogate
from iogate import (
    Access,
    AsyncAPIManager,
    AsyncDatabaseManager,
    AsyncMemoryManager,
    AsyncMySQLManager,
    AsyncOperationOrchestrator,
    AsyncPostgreSQLManager,
    AsyncRedisManager,
    AsyncSQLiteManager,
    Cache,
    CircuitBreakerConfig,
    DatabaseConnectionPool,
    DatabaseOptions,
    DatabaseType,
    Deadline,
    ExternalAPISession,
    Result,
    RetryPolicy,
    Transaction,
    cached,
    circuit_breaker_api_call,
    execute_with_retry,
    get_api_session,
    get_database_connection,
    resilient_api_operation,
    resilient_database_operation,
    track_api_operation,
    track_database_operation,
)
from iogate.errors import (
    APIError,
    ConnectionError,
    DatabaseError,
    ErrorType,
    IogateError,
    QueryError,
    RateLimitError,
    TimeoutError,
)

assert_type(iogate.__version__, str)


# -- Result ------------------------------------------------------------------------------


def result_fields(result: Result) -> None:
    assert_type(result.success, bool)
    assert_type(result.data, Any)
    assert_type(result.error, str | None)
    assert_type(result.error_type, ErrorType | None)
    assert_type(result.resource, str | None)
    assert_type(result.operation, str | None)
    assert_type(result.duration_ms, float)
    assert_type(result.attempts, int)
    assert_type(result.rows_affected, int | None)
    assert_type(result.last_insert_id, int | None)
    assert_type(result.status_code, int | None)
    assert_type(result.truncated, bool)
    assert_type(result.headers, dict[str, str] | None)
    assert_type(result.to_dict(), dict[str, Any])
    assert_type(Result.from_dict(result.to_dict()), Result)
    assert_type(result.raise_for_error("load user 42"), Result)
    assert_type(Result.ok([{"id": 1}], resource="db", rows_affected=1), Result)
    assert_type(Result.fail("no such user", "not_found"), Result)


# -- the managers (seed 000) ---------------------------------------------------------------


async def postgresql(user_id: str) -> None:
    manager = AsyncPostgreSQLManager("postgresql://user:pass@localhost:5432/db", max_connections=20)
    await manager.initialize_pool()

    result = await manager.execute_query("SELECT * FROM users WHERE id = $1", {"1": user_id})
    assert_type(result, Result)
    rows = await manager.execute_query(
        "SELECT * FROM users WHERE id = $1",
        [user_id],
        deadline=Deadline(2.0),
        read_only=True,
        max_rows=100,
        guard=Access.READ,
    )
    assert_type(rows.truncated, bool)
    await manager.close()

    tuned = AsyncPostgreSQLManager(
        "postgresql://user:pass@localhost:5432/db",
        name="main_db",
        options=DatabaseOptions(max_connections=20, statement_timeout=5.0, max_rows=1000),
    )
    async with tuned as db:
        await db.ping(timeout=1.0)
        assert_type(db.get_stats(), dict[str, Any])


async def sqlite(user_data: dict[str, Any]) -> None:
    manager = AsyncSQLiteManager("cache.db", max_connections=5)
    await manager.initialize_pool()

    result = await manager.execute_query(
        "INSERT INTO cache (key, value) VALUES (?, ?)",
        {"1": "user:123", "2": json.dumps(user_data)},
    )
    assert_type(result, Result)
    await manager.aclose()


async def mysql() -> None:
    manager = AsyncMySQLManager("mysql://root@localhost:3306/test", max_connections=10)
    await manager.initialize_pool()
    result = await manager.execute_query("SELECT * FROM users WHERE id = ?", ["42"])
    assert_type(result, Result)
    assert_type(manager.target, str)
    await manager.close()


async def transaction(manager: AsyncSQLiteManager) -> None:
    async with manager.transaction() as tx:
        in_block: Transaction = tx
        result = await in_block.execute_query("INSERT INTO t (a) VALUES (?)", [1])
        assert_type(result, Result)
    async with manager.transaction(read_only=True, deadline=Deadline(5.0)) as tx:
        assert_type(await tx.execute_query("SELECT a FROM t"), Result)
    async with manager.transaction(guard=Access.WRITE) as tx:
        assert_type(await tx.execute_query("UPDATE t SET a = $1", {"1": 2}), Result)


async def redis(user_data: dict[str, Any]) -> None:
    manager = AsyncRedisManager("redis://localhost:6379", max_connections=10)
    await manager.initialize_pool()

    result = await manager.execute_query(
        "user:123", {"operation": "set", "key": "user:123", "value": user_data}
    )
    assert_type(result, Result)
    await manager.close()


async def memory() -> None:
    async with AsyncMemoryManager(name="cache") as store:
        result = await store.execute_query("k", {"operation": "get", "key": "k"})
        assert_type(result, Result)


async def api() -> None:
    manager = AsyncAPIManager("https://api.external.com", max_connections=30, timeout=60)
    await manager.initialize_session()

    result = await manager.get("/users/123")
    assert_type(result, Result)
    result = await manager.post("/users", {"name": "John"})
    assert_type(result.status_code, int | None)
    await manager.close()


async def api_resilience() -> None:
    policy = RetryPolicy(
        attempts=4, backoff_initial=0.2, backoff_max=5.0, retry_statuses=frozenset({502, 503})
    )
    breaker = CircuitBreakerConfig(failure_threshold=5, recovery_timeout=30.0, failure_ratio=None)
    assert_type(policy.attempts, int)
    assert_type(breaker.failure_ratio, float | None)
    async with AsyncAPIManager(
        "https://crm.example",
        headers={"Authorization": "Bearer token"},
        retry=policy,
        circuit_breaker=breaker,
        rate_limit="100/second",
        name="crm",
    ) as crm:
        result = await crm.request("GET", "/contacts", params={"page": 2}, deadline=Deadline(3.0))
        assert_type(result, Result)
    async with AsyncAPIManager("https://crm.example", retry=False, circuit_breaker=False) as bare:
        assert_type(await bare.delete("/contacts/7"), Result)


# -- the orchestrator (seed 000) ------------------------------------------------------------


async def orchestrator(conn_string: str, query: str, params: dict[str, Any]) -> None:
    orchestrator = AsyncOperationOrchestrator()

    database = await orchestrator.add_database_manager(
        "main_db", DatabaseType.POSTGRESQL, conn_string
    )
    assert_type(database, AsyncDatabaseManager)
    external = await orchestrator.add_api_manager("external_api", "https://api.example.com")
    assert_type(external, AsyncAPIManager)
    await orchestrator.add_database_manager(
        "cache_db", "sqlite", "cache.db", max_connections=5, statement_timeout=2.0
    )
    await orchestrator.add_api_manager("crm", "https://crm.example", timeout=3.0, retry=False)

    result = await orchestrator.execute_database_operation("main_db", query, params)
    assert_type(result, Result)
    result = await orchestrator.execute_api_operation("external_api", "GET", "/users")
    assert_type(result, Result)
    result = await orchestrator.execute_api_operation(
        "external_api", "POST", "/user-profiles", {"user_id": 1, "profile": {}}
    )
    if not result.success:
        print(f"Database operation failed: {result.error}")

    operations = [
        {"type": "database", "db_name": "main_db", "query": "SELECT * FROM users"},
        {"type": "api", "api_name": "external_api", "method": "GET", "endpoint": "/users"},
    ]
    results = await orchestrator.execute_batch_operations(operations)
    assert_type(results, list[Result])
    successful_ops: int = sum(1 for r in results if r.success)
    print(successful_ops)
    atomic = await orchestrator.execute_batch_operations(
        operations, concurrency=4, atomic=True, deadline=Deadline(10.0)
    )
    assert_type(atomic, list[Result])

    await orchestrator.close()


async def orchestrator_in_a_block() -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        orchestrator.add_manager("store", AsyncMemoryManager())
        assert_type(orchestrator.get_manager("store"), AsyncDatabaseManager)
        assert_type(orchestrator.get_stats(), dict[str, Any])
        assert_type(await orchestrator.health_check(), dict[str, dict[str, Any]])


async def context_managers(query: str, params: dict[str, Any], user_ids: list[str]) -> None:
    async with get_database_connection("main_db") as db_manager:
        assert_type(db_manager, AsyncDatabaseManager)
        result = await db_manager.execute_query(query, params)
        assert_type(result, Result)

    async with get_api_session("external_api") as api_manager:
        for user_id in user_ids:
            result = await api_manager.get(f"/users/{user_id}")


async def retry_helper(orchestrator: AsyncOperationOrchestrator) -> None:
    result = await execute_with_retry(
        lambda: orchestrator.execute_api_operation("api", "GET", "/users"),
        max_retries=3,
        delay=1.0,
    )
    assert_type(result, Result)

    async def operation_function() -> int:
        return 1

    assert_type(await execute_with_retry(operation_function, max_retries=3, delay=1.0), int)


# -- the seed 002 helpers --------------------------------------------------------------------


async def connection_pool(post_id: str) -> None:
    pool = DatabaseConnectionPool("postgresql://user:pass@localhost/db", pool_size=20)
    await pool.initialize()

    async with pool.get_connection() as conn:
        await conn.fetchrow("SELECT * FROM linkedin_posts WHERE id = $1", post_id)
        async with conn.transaction():
            await conn.execute("DELETE FROM linkedin_posts WHERE id = $1", post_id)

    conn = await pool.get_connection()
    await pool.release_connection(conn)
    await pool.close()


async def external_session() -> None:
    async with ExternalAPISession("https://api.linkedin.com", timeout=30.0) as session:
        async with session.session.post(
            "/v2/ugcPosts",
            json={"lifecycleState": "PUBLISHED"},
            headers={"Content-Type": "application/json"},
        ) as response:
            if response.status == 201:
                await response.json()


async def fetch_post(post_id: str) -> dict[str, Any]:
    return {"id": post_id}


async def seed_resilience() -> None:
    post = await resilient_database_operation(fetch_post, "p1")
    assert_type(post, dict[str, Any])
    post = await resilient_api_operation(fetch_post, post_id="p1")
    assert_type(post, dict[str, Any])
    post = await circuit_breaker_api_call(fetch_post, "p1")
    assert_type(post, dict[str, Any])


@track_database_operation("create_post")
async def create_post(post_data: dict[str, Any]) -> str:
    return str(post_data["id"])


@track_api_operation("analyze_sentiment")
async def analyze_sentiment(text: str) -> dict[str, Any]:
    return {"text": text}


async def seed_metrics() -> None:
    assert_type(await create_post({"id": 1}), str)
    assert_type(await analyze_sentiment("great"), dict[str, Any])


# -- Cache and cached ----------------------------------------------------------------------


@cached(ttl=60)
async def square(n: int) -> int:
    return n * n


@cached(ttl=300, key="post:{post_id}", tags=["user:{user_id}"])
async def post_of(post_id: str, user_id: str) -> dict[str, Any] | None:
    return None


class CachedDatabaseOperations:
    @cached(ttl=300)  # Cache for 5 minutes
    async def get_post_by_id_cached(self, post_id: str) -> dict[str, Any] | None:
        return await fetch_post(post_id)


async def caching(manager: AsyncRedisManager) -> None:
    assert_type(await square(3), int)
    assert_type(await post_of("p1", user_id="u1"), dict[str, Any] | None)
    assert_type(await square.invalidate(3), int)
    assert_type(square.key_for(3), str)
    await CachedDatabaseOperations().get_post_by_id_cached("p1")

    async with Cache(manager, namespace="app:", default_ttl=60.0) as cache:

        async def load() -> list[int]:
            return [1, 2]

        assert_type(await cache.get_or_load("numbers", load, ttl=5.0, tags=["n"]), list[int])
        assert_type(await cache.set("k", {"a": 1}, ttl=10.0), bool)
        assert_type(await cache.delete("k", "j"), int)
        assert_type(await cache.invalidate_tag("n"), int)
    assert_type(Cache().get_stats(), dict[str, Any])


# -- errors ---------------------------------------------------------------------------------


async def errors(manager: AsyncPostgreSQLManager) -> None:
    try:
        (await manager.execute_query("SELECT 1")).raise_for_error()
    except QueryError as exc:
        assert_type(exc.sqlstate, str | None)
        assert_type(exc.error_type, ErrorType)
    except (ConnectionError, TimeoutError) as exc:
        assert_type(exc, ConnectionError | TimeoutError)
    except DatabaseError:
        pass
    except (RateLimitError, APIError) as exc:
        assert_type(exc.error_type, ErrorType)
    except IogateError:
        raise
