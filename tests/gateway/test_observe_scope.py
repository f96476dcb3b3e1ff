"""The ``observe`` scope: ``/stats``, ``/metrics`` and ``/ready``'s details.

``/health`` and ``/ready``'s status need no key; what the gateway knows
about its resources (names, hosts, counters, reasons) needs ``observe``.
Without configured keys (a loopback gateway) everything stays open.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings

OBSERVER = "observer-key-0123456789"
WORKER = "worker-key-0123456789"
ADMIN = "admin-key-0123456789"


def config(tmp_path: Path, *, keys: bool) -> str:
    key_tables = f"""
[[gateway.api_keys]]
name = "prometheus"
key = "{OBSERVER}"
scopes = ["observe"]

[[gateway.api_keys]]
name = "worker"
key = "{WORKER}"
scopes = ["db:*:write", "ops:*", "batch"]

[[gateway.api_keys]]
name = "admin"
key = "{ADMIN}"
scopes = ["db:*:admin", "api:*"]
"""
    return f"""
{key_tables if keys else ""}
[databases.main]
type = "sqlite"
path = "{tmp_path / "observe.db"}"

[databases.gone]
type = "postgresql"
url = "postgresql://postgres:pw-canary@127.0.0.1:1/test"
acquire_timeout = 0.5
min_connections = 0
"""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(parse_settings(config(tmp_path, keys=True), env={}))
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", ["/stats", "/metrics"])
def test_stats_and_metrics_need_observe(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    for key in (WORKER, ADMIN):  # write, admin of every database: not observe
        refused = client.get(path, headers=bearer(key))
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert "'observe'" in refused.json()["detail"]
    allowed = client.get(path, headers=bearer(OBSERVER))
    assert allowed.status_code == 200


def test_metrics_as_prometheus_scrapes_them(client: TestClient) -> None:
    """Prometheus sends the key as ``Authorization: Bearer`` (``authorization``
    in the scrape config) and asks for OpenMetrics."""
    headers = {**bearer(OBSERVER), "Accept": "application/openmetrics-text; version=1.0.0"}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")


def test_ready_tells_only_its_status_without_observe(client: TestClient) -> None:
    for headers in ({}, bearer(WORKER), bearer(ADMIN), bearer("not-a-key")):
        response = client.get("/ready", headers=headers)
        assert response.status_code == 503  # "gone" is down, whoever asks
        assert response.json() == {"status": "not_ready"}
        assert "gone" not in response.text
        assert "127.0.0.1" not in response.text


def test_ready_details_for_an_observer(client: TestClient) -> None:
    response = client.get("/ready", headers=bearer(OBSERVER))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["down"] == ["gone"]
    assert set(body["resources"]) == {"main", "gone"}
    assert "pw-canary" not in response.text


def test_the_audit_names_the_observer_on_ready(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="iogate.audit"):
        client.get("/ready", headers=bearer(OBSERVER))
        client.get("/ready")
    records = [r for r in caplog.records if r.name == "iogate.audit"]
    keys = [getattr(record, "fields", {}).get("key") for record in records[-2:]]
    assert keys == ["prometheus", None]


def test_without_keys_everything_stays_open(tmp_path: Path) -> None:
    app = create_app(parse_settings(config(tmp_path, keys=False), env={}))
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/stats").status_code == 200
        assert client.get("/metrics").status_code == 200
        ready = client.get("/ready").json()
        assert ready["down"] == ["gone"]
        assert set(ready["resources"]) == {"main", "gone"}


def test_the_dashboard_page_is_open_and_asks_for_an_observe_key(client: TestClient) -> None:
    assert client.get("/dashboard").status_code == 200
    script = client.get("/dashboard/dashboard.js").text
    assert "response.status === 403" in script
    assert "observe" in script
    # The key the page sends gets the data the page draws.
    assert client.get("/stats", headers=bearer(OBSERVER)).json()["databases"]


def test_openapi_declares_it(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/stats", "/metrics"):
        operation = paths[path]["get"]
        assert operation["security"] == [{"bearer": []}]
        assert {"401", "403"} <= set(operation["responses"])
        assert "observe" in operation["description"]
    ready = paths["/ready"]["get"]
    assert "security" not in ready  # no key needed; details for observe
    assert {"200", "503"} <= set(ready["responses"])
    assert "security" not in paths["/health"]["get"]
