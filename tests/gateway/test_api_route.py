"""POST /api/execute against a real local HTTP upstream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings


class Upstream(BaseHTTPRequestHandler):
    hits: list[tuple[str, str, dict[str, str]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        Upstream.hits.append((self.command, self.path, dict(self.headers)))
        if self.path.startswith("/v1/fail"):
            status, payload = 500, {"error": "boom"}
        else:
            status, payload = 200, {"path": self.path, "body": body.decode() or None}
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Upstream.hits.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def client(upstream: str) -> Iterator[TestClient]:
    config = f"""
[apis.external_api]
base_url = "{upstream}"
timeout = 2
headers = {{ Authorization = "Bearer canary-token-123" }}
retry = {{ attempts = 2, backoff_initial = 0.01, backoff_max = 0.02 }}
"""
    with TestClient(
        create_app(parse_settings(config, env={})), base_url="http://localhost"
    ) as test_client:
        yield test_client


def test_get_reaches_the_base_url_path(client: TestClient) -> None:
    response = client.post(
        "/api/execute",
        json={
            "api_name": "external_api",
            "method": "GET",
            "endpoint": "/users/123",
            "params": {"include": "profile"},
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["data"]["path"] == "/v1/users/123?include=profile"
    assert body["status_code"] == 200
    method, path, headers = Upstream.hits[-1]
    assert (method, path) == ("GET", "/v1/users/123?include=profile")
    assert headers["Authorization"] == "Bearer canary-token-123"
    assert "canary-token-123" not in response.text


def test_upstream_error_is_502_without_secrets(client: TestClient) -> None:
    response = client.post(
        "/api/execute", json={"api_name": "external_api", "method": "GET", "endpoint": "/fail"}
    )
    assert response.status_code == 502
    assert response.json()["error_type"] == "http_error"
    assert "canary-token-123" not in response.text


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.2/x", "//127.0.0.2/x", "/../admin", "/%2e%2e/x"]
)
def test_endpoints_leaving_the_base_url_are_refused(client: TestClient, endpoint: str) -> None:
    before = len(Upstream.hits)
    response = client.post(
        "/api/execute", json={"api_name": "external_api", "method": "GET", "endpoint": endpoint}
    )
    assert response.status_code == 422
    assert response.json()["error_type"] == "invalid_request"
    assert len(Upstream.hits) == before


def test_unknown_api_is_404(client: TestClient) -> None:
    response = client.post("/api/execute", json={"api_name": "nope", "endpoint": "/x"})
    assert response.status_code == 404
