"""POST /batch/execute, GET /operations, POST /operations/{name} through the
real app (lifespan included) against PostgreSQL and a local aiohttp upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from aiohttp import web

from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    async def validate(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"email": body["email"], "valid": "@" in body["email"]})

    app = web.Application()
    app.router.add_post("/v1/validate", validate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


@pytest.fixture
async def users(pg_raw: asyncpg.Connection, table_name: str) -> AsyncIterator[str]:
    await pg_raw.execute(
        f"CREATE TABLE {table_name} (id serial PRIMARY KEY, email text UNIQUE NOT NULL, "
        "password_hash text)"
    )
    try:
        yield table_name
    finally:
        await pg_raw.execute(f"DROP TABLE IF EXISTS {table_name}")


@pytest.fixture
async def client(
    postgres_url: str, upstream_url: str, users: str
) -> AsyncIterator[httpx.AsyncClient]:
    config = f"""
[gateway]
max_batch_operations = 5

[databases.main_db]
type = "postgresql"
url = "{postgres_url}"

[databases.locked]
type = "postgresql"
url = "{postgres_url}"
allow_raw_sql = false

[databases.redis_cache]
type = "memory"

[apis.email_validator]
base_url = "{upstream_url}"

[operations.get_user]
database = "main_db"
query = "SELECT id, email FROM {users} WHERE id = $1"
params = ["id"]
description = "One user by id"
cache = {{ database = "redis_cache", ttl = 30 }}
"""
    app = create_app(parse_settings(config, env={}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http


def register_user(users: str, email: str) -> list[dict[str, Any]]:
    return [
        {
            "id": "user",
            "type": "database",
            "db_name": "main_db",
            "query": f"INSERT INTO {users} (email, password_hash) VALUES ($1, $2) RETURNING id",
            "params": {"1": email, "2": "hash"},
        },
        {
            "id": "check",
            "type": "api",
            "api_name": "email_validator",
            "method": "POST",
            "endpoint": "/validate",
            "data": {"email": email},
        },
        {
            "type": "database",
            "db_name": "redis_cache",
            "query": {"$fmt": "user:{user.data.0.id}"},
            "params": {
                "operation": "set",
                "value": {"email": email, "valid": {"$ref": "check.data.valid"}},
            },
        },
    ]


async def test_register_user_in_one_request(
    client: httpx.AsyncClient, users: str, pg_raw: asyncpg.Connection
) -> None:
    response = await client.post(
        "/batch/execute", json={"operations": register_user(users, "ada@example.com")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["success"] for r in body["results"]] == [True, True, True]
    assert body["summary"] == {"total": 3, "succeeded": 3, "failed": {}}
    user_id = body["results"][0]["data"][0]["id"]
    assert await pg_raw.fetchval(f"SELECT email FROM {users} WHERE id = $1", user_id)

    again = await client.post(
        "/batch/execute", json={"operations": register_user(users, "ada@example.com")}
    )
    assert again.json()["summary"]["failed"] == {"dependency_failed": 1, "query_error": 1}


async def test_batch_refusals(client: httpx.AsyncClient, users: str) -> None:
    too_many = [{"type": "database", "db_name": "main_db", "query": "SELECT 1"}] * 6
    response = await client.post("/batch/execute", json={"operations": too_many})
    assert response.status_code == 422
    assert "at most 5" in response.json()["detail"]

    atomic = await client.post(
        "/batch/execute",
        json={"operations": register_user(users, "b@example.com"), "atomic": True},
    )
    assert atomic.status_code == 422
    assert atomic.headers["content-type"] == "application/problem+json"
    assert "cannot be rolled back" in atomic.json()["detail"]

    forward = [
        {
            "type": "api",
            "api_name": "email_validator",
            "method": "GET",
            "endpoint": {"$ref": "1.data"},
        }
    ]
    response = await client.post("/batch/execute", json={"operations": forward})
    assert response.status_code == 422

    locked = [{"type": "database", "db_name": "locked", "query": "SELECT 1"}]
    response = await client.post("/batch/execute", json={"operations": locked})
    assert response.status_code == 403

    bad = await client.post("/batch/execute", json={"operations": [{"type": "database"}]})
    assert bad.status_code == 200
    assert "missing field 'db_name'" in bad.json()["results"][0]["error"]


async def test_named_operations_over_http(
    client: httpx.AsyncClient, users: str, pg_raw: asyncpg.Connection
) -> None:
    listed = (await client.get("/operations")).json()["operations"]
    get_user = next(op for op in listed if op["name"] == "get_user")
    assert get_user["params"] == [{"name": "id", "required": True, "type": None}]
    assert get_user["cached"] is True
    assert "query" not in get_user

    user_id = await pg_raw.fetchval(f"INSERT INTO {users} (email) VALUES ('c@x.io') RETURNING id")
    found = await client.post("/operations/get_user", json={"id": user_id})
    assert found.status_code == 200
    assert found.json()["data"] == [{"id": user_id, "email": "c@x.io"}]
    assert found.json()["operation"] == "get_user"

    missing = await client.post("/operations/get_user", json={})
    assert missing.status_code == 422
    assert "missing parameter 'id'" in missing.json()["error"]
    extra = await client.post("/operations/get_user", json={"id": 1, "name": "x"})
    assert extra.status_code == 422
    assert "unexpected parameter 'name'" in extra.json()["error"]
    unknown = await client.post("/operations/nope", json={})
    assert unknown.status_code == 404

    stats = (await client.get("/stats")).json()
    assert "get_user" in str(stats["operations"])
