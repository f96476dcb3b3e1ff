"""What the gateway builds from the settings: every key reaches its manager.

Issue 15: ``acquire_timeout = 0.1`` on a Redis database was accepted and
dropped (the manager waited 5 s); ``retry_statuses`` and
``failure_ratio = false`` could not be given at all.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from iogate.backends.http import AsyncAPIManager
from iogate.backends.redis import AsyncRedisManager
from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings


def test_the_app_builds_managers_with_every_configured_option(
    tmp_path: Path, redis_url: str
) -> None:
    config = f"""
[databases.main]
type = "sqlite"
path = "{tmp_path / "main.db"}"
busy_timeout = 2

[databases.kv]
type = "redis"
url = "{redis_url}"
auto_pipeline = false
acquire_timeout = 0.1
max_connections = 3

[apis.crm]
base_url = "https://crm.example.com/v1"
retry = {{ attempts = 2, retry_statuses = [500] }}
circuit_breaker = {{ failure_ratio = false, failure_threshold = 7 }}
"""
    app = create_app(parse_settings(config, env={}))
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/ready").status_code == 200
        orchestrator = app.state.orchestrator
        kv = orchestrator.databases["kv"]
        assert isinstance(kv, AsyncRedisManager)
        assert kv.options.acquire_timeout == 0.1
        assert kv.options.max_connections == 3
        assert kv.options.auto_pipeline is False
        assert orchestrator.databases["main"].options.busy_timeout == 2
        crm = orchestrator.apis["crm"]
        assert isinstance(crm, AsyncAPIManager)
        assert crm.retry_policy.attempts == 2
        assert crm.retry_policy.retry_statuses == frozenset({500})
        assert crm.breaker is not None
        assert crm.breaker.config.failure_ratio is None
        assert crm.breaker.config.failure_threshold == 7


def test_read_only_key_value_databases_refuse_writes_through_the_gateway(redis_url: str) -> None:
    # Issue 15: `read_only = true` on a memory database loaded and was dropped:
    # POST /database/execute with a `set` answered 200.
    config = f"""
[databases.cache]
type = "memory"
read_only = true

[databases.kv]
type = "redis"
url = "{redis_url}"
read_only = true
acquire_timeout = 0.5
"""
    app = create_app(parse_settings(config, env={}))
    with TestClient(app, base_url="http://localhost") as client:
        assert app.state.orchestrator.databases["kv"].options.acquire_timeout == 0.5
        for database in ("cache", "kv"):
            write = client.post(
                "/database/execute",
                json={
                    "db_name": database,
                    "query": "k",
                    "params": {"operation": "set", "key": "issue15:ro", "value": "x"},
                },
            )
            assert write.status_code == 403, write.text
            assert write.json()["error_type"] == "read_only"
            read = client.post(
                "/database/execute",
                json={
                    "db_name": database,
                    "query": "k",
                    "params": {"operation": "get", "key": "issue15:ro"},
                },
            )
            assert read.status_code == 200, read.text
            assert read.json()["data"] is None
