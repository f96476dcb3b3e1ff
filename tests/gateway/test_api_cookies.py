"""A cookie one caller's request obtained never travels with another's: a real
``iogate serve`` process, two API keys, one configured API.

The gateway holds one ``AsyncAPIManager`` per API for every caller. The
upstream is a threaded ``http.server`` (these tests are synchronous):
``/v1/login`` sets ``sid=secret-1``, every request's Cookie header is kept.
The API is configured by host name, ``localhost``: aiohttp's default cookie
jar ignores cookies from an IP address, and would hide a stored cookie.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.security.support import READER, WRITER, GatewayProcess, serve

KEY_A, KEY_B = READER, WRITER  # two callers; their scopes below are api:up only


class Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cookies: dict[str, list[str | None]] = {}

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: Upstream

    def do_GET(self) -> None:
        self.server.cookies.setdefault(self.path, []).append(self.headers.get("Cookie"))
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        if self.path == "/v1/login":
            self.send_header("Set-Cookie", "sid=secret-1; Path=/")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def gateway(upstream: Upstream, tmp_path: Path) -> Iterator[GatewayProcess]:
    config = f"""
[[gateway.api_keys]]
name = "a"
key = "${{READER_KEY}}"
scopes = ["api:up"]

[[gateway.api_keys]]
name = "b"
key = "${{WRITER_KEY}}"
scopes = ["api:up"]

[apis.up]
base_url = "http://localhost:{upstream.port}/v1"
timeout = 5
retry = {{ attempts = 1 }}
"""
    with serve(tmp_path, config) as process:
        yield process


def call(gateway: GatewayProcess, endpoint: str, *, key: str) -> dict[str, Any]:
    body = {"api_name": "up", "method": "GET", "endpoint": endpoint}
    response = gateway.gateway.post("/api/execute", body, key=key)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_a_cookie_set_for_one_key_never_reaches_another_keys_call(
    gateway: GatewayProcess, upstream: Upstream
) -> None:
    login = call(gateway, "/login", key=KEY_A)
    assert login["headers"]["Set-Cookie"].startswith("sid=secret-1")
    call(gateway, "/echo", key=KEY_B)
    assert upstream.cookies["/v1/echo"] == [None]
