"""``/ready`` judges what the gateway needs: its databases and caches.

An API that is down, or whose circuit breaker is open, is reported as
``degraded`` in an observer's body and keeps ``/ready`` at 200, so one failing
upstream does not take every gateway instance out of the load balancer.
``[gateway] ready_includes_apis = true`` makes such an API fail readiness as
before. Real ``iogate serve`` processes, a real upstream behind a switchable
TCP relay, keys with and without ``observe``; a database that is down still
fails readiness.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.faults.proxy import FaultProxy
from tests.gateway.test_ready_proxy import serve_gateway

OBSERVER = "observer-key-0123456789abcdef"
CLIENT = "client-key-0123456789abcdef"


class Upstream:
    """A real HTTP API on loopback that answers 200, or 500 when ``failing``."""

    def __init__(self) -> None:
        self.failing = False
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _item(self, request: web.Request) -> web.Response:
        if self.failing:
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response({"id": request.match_info["n"]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/items/{n}", self._item)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def relay(upstream: Upstream) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy.for_url(upstream.url, 80)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def config(tmp_path: Path, upstream_url: str, *, includes_apis: bool | None = None) -> str:
    setting = "" if includes_apis is None else f"ready_includes_apis = {str(includes_apis).lower()}"
    return f"""{setting}

[[gateway.api_keys]]
name = "ops"
key = "{OBSERVER}"
scopes = ["observe"]

[[gateway.api_keys]]
name = "app"
key = "{CLIENT}"
scopes = ["api:upstream", "db:main:read"]

[databases.main]
type = "sqlite"
path = "{tmp_path / "main.db"}"

[databases.cache]
type = "memory"

[apis.upstream]
base_url = "{upstream_url}"
retry = {{ attempts = 1 }}
circuit_breaker = {{ failure_threshold = 2, recovery_timeout = 120 }}
"""


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def ready(client: httpx.AsyncClient, key: str = OBSERVER) -> tuple[int, dict[str, Any]]:
    response = await client.get("/ready", headers=bearer(key), timeout=5.0)
    return response.status_code, response.json()


async def open_the_circuit(client: httpx.AsyncClient, upstream: Upstream) -> None:
    upstream.failing = True
    body: dict[str, Any] = {}
    for n in range(10):
        response = await client.post(
            "/api/execute",
            json={"api_name": "upstream", "endpoint": f"/items/{n}"},
            headers=bearer(CLIENT),
        )
        body = response.json()
        if body.get("error_type") == "circuit_open":
            assert response.status_code == 503
            return
    pytest.fail(f"the circuit did not open: {body}")


async def test_an_api_down_or_open_is_degraded_and_the_gateway_stays_ready(
    tmp_path: Path, upstream: Upstream, relay: FaultProxy
) -> None:
    async with (
        serve_gateway(config(tmp_path, relay.url(upstream.url)), tmp_path) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        status, body = await ready(client)
        assert status == 200, body
        assert (body["status"], body["down"], body["degraded"]) == ("ready", [], [])
        assert body["resources"]["upstream"]["kind"] == "api"
        assert body["resources"]["upstream"]["required"] is False
        assert body["resources"]["main"]["kind"] == "database"
        assert body["resources"]["cache"]["required"] is True

        # The upstream stops answering: degraded, still ready.
        await relay.set("refuse")
        status, body = await ready(client)
        assert status == 200, body
        assert body["status"] == "ready"
        assert body["down"] == []
        assert body["degraded"] == ["upstream"]
        assert body["resources"]["upstream"]["status"] == "down"
        # Without observe: the status only, as before.
        for key in (CLIENT, "not-a-key"):
            status, body = await ready(client, key)
            assert (status, body) == (200, {"status": "ready"})
        no_key = await client.get("/ready")
        assert (no_key.status_code, no_key.json()) == (200, {"status": "ready"})

        # It answers again but fails: the breaker opens; still degraded, still ready.
        await relay.set("open")
        status, body = await ready(client)
        assert (status, body["degraded"]) == (200, []), body
        await open_the_circuit(client, upstream)
        status, body = await ready(client)
        assert status == 200, body
        assert body["degraded"] == ["upstream"]
        assert body["resources"]["upstream"]["circuit"] == "open"
        assert body["resources"]["upstream"]["error_type"] == "circuit_open"
        # The databases keep serving meanwhile.
        query = {"db_name": "main", "query": "SELECT 1 AS one"}
        answer = await client.post("/database/execute", json=query, headers=bearer(CLIENT))
        assert answer.json()["data"] == [{"one": 1}]


async def test_ready_includes_apis_makes_an_open_circuit_fail_readiness(
    tmp_path: Path, upstream: Upstream
) -> None:
    settings = config(tmp_path, upstream.url, includes_apis=True)
    async with (
        serve_gateway(settings, tmp_path) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        status, body = await ready(client)
        assert status == 200, body
        assert body["resources"]["upstream"]["required"] is True
        await open_the_circuit(client, upstream)
        status, body = await ready(client)
        assert status == 503, body
        assert body["status"] == "not_ready"
        assert body["down"] == ["upstream"]
        assert body["degraded"] == []
        status, body = await ready(client, CLIENT)
        assert (status, body) == (503, {"status": "not_ready"})


async def test_a_database_that_is_down_still_fails_readiness(
    tmp_path: Path, upstream: Upstream
) -> None:
    settings = config(tmp_path, upstream.url) + (
        '\n[databases.gone]\ntype = "postgresql"\n'
        'url = "postgresql://postgres@127.0.0.1:1/test"\nacquire_timeout = 0.5\n'
        "min_connections = 0\n"
    )
    async with (
        serve_gateway(settings, tmp_path) as base,
        httpx.AsyncClient(base_url=base) as client,
    ):
        status, body = await ready(client)
        assert status == 503, body
        assert (body["down"], body["degraded"]) == (["gone"], [])
        assert body["resources"]["gone"]["required"] is True
