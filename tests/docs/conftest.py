"""Fixtures for running the docs' examples: a fresh PostgreSQL database, a
local stand-in for the HTTP API the guide calls, and the substitutions that
point the examples' addresses at them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web

# The addresses the docs use, as written in them.
DOC_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DOC_REDIS = "redis://127.0.0.1:6379/0"
DOC_API = "https://api.example.com"


@pytest.fixture
async def fresh_postgres(postgres_url: str) -> AsyncIterator[str]:
    """A new, empty database on the test server, dropped afterwards."""
    name = f"doc_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    parts = urlsplit(postgres_url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


async def _users(request: web.Request) -> web.Response:
    user_id = int(request.match_info["id"])
    if user_id == 0:
        return web.json_response({"error": "no such user"}, status=404)
    return web.json_response({"id": user_id, "name": "ada", "query": dict(request.query)})


async def _create_user(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"id": 7, **body}, status=201)


@pytest.fixture
async def fake_api() -> AsyncIterator[str]:
    """``https://api.example.com`` as the guide uses it: ``/v1/users``."""
    app = web.Application()
    app.router.add_get("/v1/users/{id}", _users)
    app.router.add_post("/v1/users", _create_user)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
def doc_addresses(fresh_postgres: str, redis_url: str, fake_api: str) -> dict[str, str]:
    """What each address written in the docs becomes in the test."""
    return {DOC_POSTGRES: fresh_postgres, DOC_REDIS: redis_url, DOC_API: fake_api}


def substitute(code: str, addresses: dict[str, str]) -> str:
    for written, actual in addresses.items():
        code = code.replace(written, actual)
    return code
