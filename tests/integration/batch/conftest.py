"""Batch fixtures: the real PostgreSQL and Redis (tests/conftest.py finds them,
skips without them, fails with IOGATE_REQUIRE_SERVICES=1) and a real aiohttp
upstream on 127.0.0.1 that records every request."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from iogate.orchestrator import AsyncOperationOrchestrator, DatabaseType

API_NAMES = ("external_api", "analytics_api", "ai_validator", "search_api", "email_validator")


@dataclass
class Upstream:
    base_url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def paths(self, method: str | None = None) -> list[str]:
        return [r["path"] for r in self.requests if method is None or r["method"] == method]


def _app(upstream: Upstream) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        upstream.requests.append({"method": request.method, "path": request.path, "body": body})
        if request.path.startswith("/v1/fail"):
            return web.json_response({"error": "boom"}, status=500)
        if request.path == "/v1/validate":
            email = (body or {}).get("email", "")
            return web.json_response({"email": email, "valid": "@" in email})
        return web.json_response({"ok": True, "path": request.path, "received": body})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    runner = web.AppRunner(_app(state))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
def prefix() -> str:
    return f"iogate:batch:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def orchestrator(
    postgres_url: str, redis_url: str, upstream: Upstream
) -> AsyncIterator[AsyncOperationOrchestrator]:
    async with AsyncOperationOrchestrator() as orch:
        await orch.add_database_manager(
            "main_db", DatabaseType.POSTGRESQL, postgres_url, max_connections=10
        )
        await orch.add_database_manager("redis_cache", DatabaseType.REDIS, redis_url)
        for name in API_NAMES:
            await orch.add_api_manager(name, upstream.base_url)
        yield orch


@pytest.fixture
async def users_table(pg_raw: asyncpg.Connection, table_name: str) -> AsyncIterator[str]:
    await pg_raw.execute(
        f"CREATE TABLE {table_name} (id serial PRIMARY KEY, email text UNIQUE NOT NULL, "
        "password_hash text, name text, processed boolean NOT NULL DEFAULT false)"
    )
    try:
        yield table_name
    finally:
        await pg_raw.execute(f"DROP TABLE IF EXISTS {table_name}")
