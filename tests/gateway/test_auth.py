"""API keys, scopes and database-enforced read-only SQL through the gateway."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import asyncpg
import pytest
from fastapi.testclient import TestClient

from iogate.gateway.app import create_app
from iogate.gateway.auth import Principal
from iogate.gateway.settings import parse_settings

WRITER = "writer-key-0123456789"
READER = "reader-key-0123456789"
ADMIN = "admin-key-0123456789"


@pytest.fixture
def client(postgres_url: str) -> Iterator[TestClient]:
    config = f"""
[[gateway.api_keys]]
name = "writer"
key = "${{WRITER_KEY}}"
scopes = ["db:pg:write"]

[[gateway.api_keys]]
name = "admin"
key = "{ADMIN}"
scopes = ["db:pg:admin"]

[[gateway.api_keys]]
name = "reader"
key_sha256 = "{hashlib.sha256(READER.encode()).hexdigest()}"
scopes = ["db:pg:read"]

[databases.pg]
type = "postgresql"
url = "{postgres_url}"
"""
    settings = parse_settings(config, env={"WRITER_KEY": WRITER})
    with TestClient(create_app(settings), base_url="http://localhost") as test_client:
        yield test_client


def run(client: TestClient, key: str | None, query: str) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = client.post(
        "/database/execute", json={"db_name": "pg", "query": query}, headers=headers
    )
    return response.status_code, response.json()


def test_missing_and_unknown_keys_are_401(client: TestClient) -> None:
    assert run(client, None, "SELECT 1")[0] == 401
    assert run(client, "wrong-key", "SELECT 1")[0] == 401
    assert client.get("/stats").status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/health").status_code == 200


def test_scopes(client: TestClient) -> None:
    assert run(client, READER, "SELECT 1 AS one")[0] == 200
    assert run(client, WRITER, "SELECT 1 AS one")[0] == 200  # write implies read
    response = client.post(
        "/api/execute",
        json={"api_name": "x", "endpoint": "/"},
        headers={"Authorization": f"Bearer {READER}"},
    )
    assert response.status_code == 403
    assert "api:x" in response.json()["detail"]


async def test_read_only_key_cannot_write_even_with_stacked_statements(
    client: TestClient, table_name: str, pg_raw: asyncpg.Connection
) -> None:
    status, body = run(client, READER, f"SELECT 1; CREATE TABLE {table_name} (id int)")
    assert status in (400, 403)
    assert not body["success"]
    status, body = run(client, READER, f"CREATE TABLE {table_name} (id int)")
    assert (status, body["error_type"]) == (403, "forbidden_statement")
    assert "CREATE TABLE" in str(body["error"])
    assert await pg_raw.fetchval("SELECT to_regclass($1)", table_name) is None
    # DDL needs admin: a write key runs data statements only.
    status, body = run(client, WRITER, f"CREATE TABLE {table_name} (id int)")
    assert (status, body["error_type"]) == (403, "forbidden_statement")
    assert await pg_raw.fetchval("SELECT to_regclass($1)", table_name) is None
    status, _ = run(client, ADMIN, f"CREATE TABLE {table_name} (id int)")
    assert status == 200
    assert await pg_raw.fetchval("SELECT to_regclass($1)", table_name) is not None
    await pg_raw.execute(f"DROP TABLE {table_name}")


def test_principal_wildcards() -> None:
    principal = Principal("k", frozenset({"db:*:read", "ops:*", "batch"}))
    assert principal.allows("db:main:read")
    assert not principal.allows("db:main:write")
    assert principal.allows("ops:get_user")
    assert not principal.allows("api:ext")
    writer = Principal("w", frozenset({"db:main:write"}))
    assert writer.allows("db:main:read")
    assert not writer.allows("db:other:read")
    assert not writer.allows("db:main:admin")
    admin = Principal("a", frozenset({"db:*:admin"}))
    assert admin.allows("db:main:write")
    assert admin.allows("db:main:read")


def test_sql_guard_levels() -> None:
    from iogate.core.sqlguard import Access
    from iogate.gateway.settings import SQLiteSettings

    plain = SQLiteSettings(type="sqlite", path="x.db")
    locked = SQLiteSettings(type="sqlite", path="x.db", read_only=True)
    reader = Principal("r", frozenset({"db:main:read"}))
    writer = Principal("w", frozenset({"db:main:write"}))
    admin = Principal("a", frozenset({"db:main:admin"}))
    assert reader.sql_guard("main", plain) is Access.READ
    assert writer.sql_guard("main", plain) is Access.WRITE
    assert admin.sql_guard("main", plain) is None
    for principal in (reader, writer, admin):
        assert principal.sql_guard("main", locked) is Access.READ


def test_batch_needs_batch_scope_and_each_operations_scope(client: TestClient) -> None:
    batch = {"operations": [{"type": "database", "db_name": "pg", "query": "SELECT 1"}]}
    response = client.post(
        "/batch/execute", json=batch, headers={"Authorization": f"Bearer {WRITER}"}
    )
    assert response.status_code == 403
    assert "batch" in response.json()["detail"]
    operation = client.post(
        "/operations/get_user", json={}, headers={"Authorization": f"Bearer {READER}"}
    )
    assert operation.status_code == 403
