"""Real local upstreams for the HTTP backend: never a mock of aiohttp.

``upstream`` is an aiohttp.web application on 127.0.0.1 (random port) that
counts every hit per path, with routes that answer a chosen status, fail a
given number of times, hang, reset the connection, echo, redirect, or set a
cookie.
``canary`` is a bare TCP server on 127.0.0.2 that counts accepted
connections: SSRF tests assert it saw none. When 127.0.0.2 cannot be bound
the canary tests skip, or fail with ``IOGATE_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from iogate.backends.http import AsyncAPIManager
from tests.conftest import unavailable
from tests.fakes import RecordingSleep

SECRET_TOKEN = "s3cr3t-token-value-for-tests"


@dataclass
class Upstream:
    host: str
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    requests: list[dict[str, Any]] = field(default_factory=list)
    healthy: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    canary_port: int = 0

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    @property
    def named_base_url(self) -> str:
        """The base URL by host name: aiohttp keeps no cookies from an IP address."""
        return f"http://localhost:{self.port}/v1"

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())


@dataclass
class Canary:
    host: str
    port: int = 0
    connections: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)


def _build_app(upstream: Upstream) -> web.Application:
    async def record(request: web.Request) -> bytes:
        body = await request.read()
        upstream.hits[request.path] += 1
        upstream.requests.append(
            {"method": request.method, "path": request.path, "headers": dict(request.headers)}
        )
        return body

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response(
            {"ok": True, "method": request.method, "query": dict(request.query)}
        )

    async def status(request: web.Request) -> web.Response:
        await record(request)
        code = int(request.match_info["code"])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        size = int(request.query.get("size", "0"))
        if size:
            return web.Response(status=code, text="x" * size, headers=headers)
        return web.json_response({"status": code}, status=code, headers=headers)

    async def flaky(request: web.Request) -> web.Response:
        await record(request)
        failures = int(request.match_info["failures"])
        if upstream.hits[request.path] <= failures:
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.json_response({"try": "again"}, status=503, headers=headers)
        return web.json_response({"ok": True, "after": failures})

    async def toggle(request: web.Request) -> web.Response:
        await record(request)
        if upstream.healthy:
            return web.json_response({"ok": True})
        return web.json_response({"ok": False}, status=503)

    async def hang(request: web.Request) -> web.Response:
        await record(request)
        await upstream.release.wait()
        return web.json_response({"late": True})

    async def reset(request: web.Request) -> web.Response:
        await record(request)
        assert request.transport is not None
        request.transport.abort()  # the request arrived; the answer never will
        raise ConnectionResetError

    async def echo(request: web.Request) -> web.Response:
        body = await record(request)
        return web.json_response(
            {"headers": dict(request.headers), "body": body.decode(), "method": request.method}
        )

    async def login(request: web.Request) -> web.Response:
        await record(request)
        response = web.json_response({"logged_in": True})
        response.headers["Set-Cookie"] = "sid=secret-1; Path=/"
        return response

    async def text(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text="plain words", content_type="text/plain")

    async def redirect_local(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound("/v1/ok")

    async def redirect_offsite(request: web.Request) -> web.Response:
        await record(request)
        raise web.HTTPFound(f"http://127.0.0.2:{upstream.canary_port}/v1/ok")

    app = web.Application()
    app.router.add_route("*", "/v1/ok", ok)
    app.router.add_route("*", "/v1/status/{code}", status)
    app.router.add_route("*", "/v1/flaky/{failures}/{key}", flaky)
    app.router.add_route("*", "/v1/toggle", toggle)
    app.router.add_route("*", "/v1/hang", hang)
    app.router.add_route("*", "/v1/reset", reset)
    app.router.add_route("*", "/v1/echo", echo)
    app.router.add_route("*", "/v1/login", login)
    app.router.add_route("*", "/v1/text", text)
    app.router.add_route("*", "/v1/redirect/local", redirect_local)
    app.router.add_route("*", "/v1/redirect/offsite", redirect_offsite)
    return app


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    state = Canary(host="127.0.0.2")

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        state.connected.set()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\ncanary!")
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(on_connect, state.host, 0)
    except OSError as exc:
        unavailable(f"cannot listen on 127.0.0.2 for the SSRF canary: {exc}")
        raise
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state
        server.close()


@pytest.fixture
async def upstream(canary: Canary) -> AsyncIterator[Upstream]:
    state = Upstream(host="127.0.0.1", canary_port=canary.port)
    runner = web.AppRunner(_build_app(state), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, state.host, 0)
    await site.start()
    assert runner.addresses
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
async def make_manager(
    upstream: Upstream, sleep: RecordingSleep
) -> AsyncIterator[Callable[..., AsyncAPIManager]]:
    """``make_manager(**options)``: managers on ``upstream``, closed after the test."""
    managers: list[AsyncAPIManager] = []

    def make(base_url: str | None = None, **options: Any) -> AsyncAPIManager:
        options.setdefault("sleep", sleep)
        options.setdefault("name", "upstream")
        manager = AsyncAPIManager(base_url or upstream.base_url, **options)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.close()
