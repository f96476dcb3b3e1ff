"""What a browser may reach: the Host allow-list (DNS rebinding) and CORS.

In-process tests with TestClient and raw ASGI calls, then a DNS-rebinding
attempt against a real ``iogate serve`` process.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message

from iogate.core.errors import ConfigError
from iogate.gateway.app import create_app
from iogate.gateway.browser import HostAllowList, allowed_hosts_for
from iogate.gateway.settings import GatewaySettings, parse_settings
from tests.gateway.test_ready_proxy import serve_gateway

KEY = "browser-reach-key-0123456789"
APP_ORIGIN = "https://app.example.com"
PROBLEM = "application/problem+json"


def make_app(tmp_path: Path, gateway: str = "", keys: bool = False) -> FastAPI:
    key_table = (
        f'[[gateway.api_keys]]\nname = "k"\nkey = "{KEY}"\nscopes = ["db:*:admin"]\n'
        if keys
        else ""
    )
    config = f"""
[gateway]
{gateway}

{key_table}
[databases.main]
type = "sqlite"
path = "{tmp_path / "browser.db"}"
"""
    return create_app(parse_settings(config, env={}))


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[TestClient]:
    """A gateway bound to loopback, no keys, allowed_hosts unset."""
    with TestClient(make_app(tmp_path), base_url="http://localhost") as client:
        yield client


# -- the allow-list -------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8080", "LOCALHOST.", "127.0.0.1:1", "[::1]:8080", "[::1]"]
)
def test_loopback_gateway_answers_loopback_names_on_any_port(
    loopback: TestClient, host: str
) -> None:
    assert loopback.get("/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.2", "[::2]"]
)
def test_loopback_gateway_refuses_foreign_names_with_421(loopback: TestClient, host: str) -> None:
    for method, path in (("GET", "/health"), ("GET", "/ready"), ("GET", "/docs")):
        response = loopback.request(method, path, headers={"Host": host})
        assert response.status_code == 421, (path, response.text)
        assert response.headers["content-type"] == PROBLEM
        assert "allowed_hosts" in response.json()["detail"]
        assert response.headers["x-request-id"]  # refused inside the request id layer
    sql = {"db_name": "main", "query": "CREATE TABLE rebound (id int)"}
    refused = loopback.post("/database/execute", json=sql, headers={"Host": host})
    assert refused.status_code == 421
    tables = {"db_name": "main", "query": "SELECT name FROM sqlite_master"}
    assert loopback.post("/database/execute", json=tables).json()["data"] == []


@pytest.mark.parametrize("host", ["a b", "[zz]", "host:port", "x:1:2", ""])
def test_a_malformed_host_is_400(loopback: TestClient, host: str) -> None:
    response = loopback.get("/health", headers={"Host": host})
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM


async def call(app: FastAPI, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Message:
    """One raw ASGI request; the response's start message. The app must answer
    without reading the body: ``receive`` fails the test if it is called."""

    async def receive() -> Message:
        raise AssertionError("the body was read")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/database/execute",
        "raw_path": b"/database/execute",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "app": app,
    }
    await app(scope, receive, send)
    return sent[0]


async def test_refused_before_auth_or_body_missing_or_repeated_host_too(tmp_path: Path) -> None:
    app = make_app(tmp_path, keys=True)
    length = (b"content-length", b"1000")
    foreign = await call(app, [(b"host", b"evil.example"), length])
    assert foreign["status"] == 421  # not 401: the key is never looked at
    assert (await call(app, [length]))["status"] == 400
    repeated = [(b"host", b"localhost"), (b"host", b"evil.example"), length]
    assert (await call(app, repeated))["status"] == 400


def test_allowed_hosts_list_replaces_the_loopback_names(tmp_path: Path) -> None:
    gateway = 'allowed_hosts = ["api.example.com", "*.internal.example", "10.0.0.5:8080", "::1"]'
    with TestClient(make_app(tmp_path, gateway), base_url="http://api.example.com") as client:
        answers = {
            "api.example.com": 200,
            "API.example.com:9999": 200,
            "db.internal.example": 200,
            "a.b.internal.example:1": 200,
            "internal.example": 421,  # *.name is subdomains only
            "10.0.0.5:8080": 200,
            "10.0.0.5:8081": 421,
            "10.0.0.5": 421,
            "[::1]:80": 200,
            "localhost": 421,  # the list replaces the loopback default
            "evil.example": 421,
        }
        for host, status in answers.items():
            assert client.get("/health", headers={"Host": host}).status_code == status, host


def test_any_host_when_bound_beyond_loopback_or_with_a_star(tmp_path: Path) -> None:
    assert allowed_hosts_for(GatewaySettings(host="0.0.0.0")) is None
    assert allowed_hosts_for(GatewaySettings(allowed_hosts=["*"])) is None
    default = allowed_hosts_for(GatewaySettings(host="127.0.0.9"))
    assert default is not None
    assert default.allows("127.0.0.9:8080")  # the bind address itself
    assert default.allows("localhost")
    with TestClient(make_app(tmp_path, 'allowed_hosts = ["*"]')) as client:
        assert client.get("/health", headers={"Host": "evil.example"}).status_code == 200
    public = make_app(tmp_path, 'host = "0.0.0.0"', keys=True)
    with TestClient(public, base_url="http://gateway.example") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/stats").status_code == 401  # the keys protect it


def test_a_bad_allowed_hosts_entry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="allowed_hosts"):
        HostAllowList(["exa mple.com"])
    with pytest.raises(ConfigError, match="allowed_hosts"):
        HostAllowList(["foo*.example.com"])
    with pytest.raises(ConfigError, match="empty"):
        HostAllowList([])


# -- CORS -----------------------------------------------------------------------------


def preflight(client: TestClient, origin: str, headers: str = "authorization,content-type") -> Any:
    return client.options(
        "/database/execute",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


def test_without_cors_origins_no_cors_headers_and_preflight_is_405(
    loopback: TestClient,
) -> None:
    response = preflight(loopback, APP_ORIGIN)
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    assert "access-control-allow-origin" not in response.headers
    simple = loopback.get("/health", headers={"Origin": APP_ORIGIN})
    assert "access-control-allow-origin" not in simple.headers


@pytest.fixture
def with_cors(tmp_path: Path) -> Iterator[TestClient]:
    gateway = f'cors_origins = ["{APP_ORIGIN}/", "http://localhost:3000"]'
    with TestClient(make_app(tmp_path, gateway, keys=True), base_url="http://localhost") as client:
        yield client


def test_preflight_from_a_listed_origin_is_allowed(with_cors: TestClient) -> None:
    response = preflight(with_cors, APP_ORIGIN, "authorization,content-type,x-request-id")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods
    allowed = response.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "x-request-id"):
        assert header in allowed
    assert "access-control-allow-credentials" not in response.headers

    answered = with_cors.post(
        "/database/execute",
        json={"db_name": "main", "query": "SELECT 1 AS one"},
        headers={"Origin": APP_ORIGIN, "Authorization": f"Bearer {KEY}"},
    )
    assert answered.status_code == 200
    assert answered.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-request-id" in answered.headers["access-control-expose-headers"].lower()


def test_preflight_from_a_foreign_origin_is_refused(with_cors: TestClient) -> None:
    for origin in ("https://evil.example", "https://app.example.com.evil.example", "null"):
        response = preflight(with_cors, origin)
        assert response.status_code == 400, origin
        assert response.headers["content-type"] == PROBLEM
        assert "origin" in response.json()["detail"]
        assert "access-control-allow-origin" not in response.headers
    unlisted_header = preflight(with_cors, APP_ORIGIN, "x-custom")
    assert unlisted_header.status_code == 400
    # A foreign origin's simple request runs (CORS is the browser's rule), but
    # its page may not read the answer.
    simple = with_cors.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_the_host_check_comes_before_cors(with_cors: TestClient) -> None:
    response = with_cors.options(
        "/database/execute",
        headers={
            "Host": "evil.example",
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
        },
    )
    assert response.status_code == 421


# -- a real process -------------------------------------------------------------------


async def test_dns_rebinding_against_a_real_gateway(tmp_path: Path) -> None:
    """The rebinding page's requests carry its own name as Host: refused
    before the route runs or the body is read; the loopback names work."""
    config = f"""
[databases.main]
type = "sqlite"
path = "{tmp_path / "rebind.db"}"
"""
    async with serve_gateway(config, tmp_path) as base:
        port = int(base.rsplit(":", 1)[1])
        sql = {"db_name": "main", "query": "CREATE TABLE rebound (id int)"}
        async with httpx.AsyncClient(base_url=base, timeout=5.0) as client:
            rebound = await client.post(
                "/database/execute", json=sql, headers={"Host": f"evil.example:{port}"}
            )
            assert rebound.status_code == 421
            assert rebound.headers["content-type"] == PROBLEM
            health = await client.get("/health", headers={"Host": "evil.example"})
            assert health.status_code == 421
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
                assert (await client.get("/health", headers={"Host": host})).status_code == 200
            tables = {"db_name": "main", "query": "SELECT name FROM sqlite_master"}
            assert (await client.post("/database/execute", json=tables)).json()["data"] == []

        # A body announced but never sent: the refusal does not wait for it.
        reply = await asyncio.wait_for(asyncio.to_thread(announce_body_and_read, port), 10)
        assert reply.startswith(b"HTTP/1.1 421"), reply[:200]


def announce_body_and_read(port: int) -> bytes:
    request = (
        b"POST /database/execute HTTP/1.1\r\nHost: evil.example\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request + b'{"db_name": "main"')
        reply = b""
        while b"\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
        return reply


def test_a_bad_allowed_hosts_entry_is_a_one_line_config_error() -> None:
    from iogate.core.errors import ConfigError
    from iogate.gateway.settings import parse_settings

    with pytest.raises(ConfigError, match=r"^gateway\.allowed_hosts: 'bad host!' is not a host"):
        parse_settings('[gateway]\nallowed_hosts = ["bad host!"]\n')
