"""The gateway over HTTP (in-process ASGI, real databases)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings


@pytest.fixture
def client(tmp_path: Path, postgres_url: str) -> Iterator[TestClient]:
    config = f"""
[gateway]
max_rows = 10
max_body_bytes = 2048

[databases.main]
type = "sqlite"
path = "{tmp_path / "gw.db"}"

[databases.pg]
type = "postgresql"
url = "{postgres_url}"
statement_timeout = 1

[databases.locked]
type = "sqlite"
path = "{tmp_path / "locked.db"}"
allow_raw_sql = false
"""
    with TestClient(
        create_app(parse_settings(config, env={})), base_url="http://localhost"
    ) as test_client:
        yield test_client


def execute(client: TestClient, **body: object) -> tuple[int, dict[str, object]]:
    response = client.post("/database/execute", json=body)
    return response.status_code, response.json()


def test_sqlite_and_postgres_queries(client: TestClient) -> None:
    status, body = execute(client, db_name="main", query="SELECT ? AS v", params={"1": "x"})
    assert (status, body["data"]) == (200, [{"v": "x"}])
    status, body = execute(client, db_name="pg", query="SELECT $1::int * 2 AS n", params=[21])
    assert (status, body["data"]) == (200, [{"n": 42}])
    assert body["resource"] == "pg"


def test_status_mapping(client: TestClient) -> None:
    assert execute(client, db_name="nope", query="SELECT 1")[0] == 404
    status, body = execute(client, db_name="main", query="SELEC 1")
    assert (status, body["error_type"]) == (400, "query_error")
    status, body = execute(client, db_name="main", query="SELECT ?", params={"2": 1})
    assert (status, body["error_type"]) == (422, "invalid_request")
    status, body = execute(client, db_name="pg", query="SELECT pg_sleep(3)")
    assert (status, body["error_type"]) == (504, "timeout")


def test_max_rows_truncates(client: TestClient) -> None:
    status, body = execute(client, db_name="pg", query="SELECT generate_series(1, 50) AS n")
    assert status == 200
    assert body["truncated"] is True
    assert len(body["data"]) == 10  # type: ignore[arg-type]


def test_invalid_bodies_are_problem_json(client: TestClient) -> None:
    response = client.post("/database/execute", json={"db_nam": "main"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "db_name" in response.json()["detail"]
    big = client.post(
        "/database/execute", content=b"x" * 5000, headers={"content-type": "application/json"}
    )
    assert big.status_code == 413
    assert big.headers["content-type"] == "application/problem+json"

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 500

    chunked = client.post(
        "/database/execute", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    missing = client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_raw_sql_refused_where_not_allowed(client: TestClient) -> None:
    status, body = execute(client, db_name="locked", query="SELECT 1")
    assert status == 403
    assert "allow_raw_sql" in str(body["detail"])


def test_health_ready_stats_docs(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert set(ready.json()["resources"]) == {"main", "pg", "locked"}
    execute(client, db_name="main", query="SELECT 1")
    stats = client.get("/stats").json()
    assert stats["databases"]["main"]["count"] >= 1
    assert "p99" in stats["databases"]["main"]["latency_ms"]
    assert client.get("/docs").status_code == 200
    assert "/database/execute" in client.get("/openapi.json").json()["paths"]


def test_ready_is_503_naming_what_is_down(tmp_path: Path) -> None:
    config = f"""
[databases.main]
type = "sqlite"
path = "{tmp_path / "ok.db"}"

[databases.gone]
type = "postgresql"
url = "postgresql://postgres:pw-canary@127.0.0.1:1/test"
acquire_timeout = 0.5
min_connections = 0
"""
    with TestClient(
        create_app(parse_settings(config, env={})), base_url="http://localhost"
    ) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["down"] == ["gone"]
        assert "pw-canary" not in ready.text
        assert client.get("/health").status_code == 200
        status, body = execute(client, db_name="gone", query="SELECT 1")
        assert (status, body["error_type"]) == (503, "connection_error")
        assert "pw-canary" not in str(body)
