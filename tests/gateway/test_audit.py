"""The audit log: one ``iogate.audit`` record per request, never a secret or a value."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from iogate.gateway.app import create_app
from iogate.gateway.audit import outcome_for
from iogate.gateway.logging import configure_logging, install_operation_log, secrets_of
from iogate.gateway.settings import parse_settings

ADMIN_KEY = "audit-admin-key-5f1e0c"
READER_KEY = "audit-reader-key-77b2a9"
# Values a request carries that the audit line must never repeat.
PARAM_VALUE = "param-value-9d41c"
QUERY_STRING_VALUE = "qs-value-3a7e"

FIELDS = {
    "request_id",
    "key",
    "method",
    "path",
    "resources",
    "kinds",
    "status",
    "outcome",
    "error_type",
    "duration_ms",
}


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    previous = root.level
    stream = io.StringIO()
    # No secrets given to the redactor on purpose: the audit line itself
    # must not carry them, masked or not.
    handler = configure_logging(level="INFO", json=True, stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(previous)


@pytest.fixture
def client(tmp_path: Path, log_stream: io.StringIO) -> Iterator[TestClient]:
    settings = parse_settings(
        f"""
[gateway]
max_body_bytes = 4096

[[gateway.api_keys]]
name = "admin"
key = "{ADMIN_KEY}"
scopes = ["db:*:write", "batch", "ops:*", "api:*"]

[[gateway.api_keys]]
name = "reader"
key = "{READER_KEY}"
scopes = ["db:main:read"]

[databases.main]
type = "sqlite"
path = "{tmp_path / "audit.db"}"

[databases.cache]
type = "memory"

[operations.echo]
database = "main"
query = "SELECT ? AS v"
params = ["v"]
""",
        env={},
    )
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    install_operation_log()
    with TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as test_client:
        yield test_client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def audit_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line["logger"] == "iogate.audit"]


def only_line_for(stream: io.StringIO, request_id: str) -> dict[str, Any]:
    matching = [line for line in audit_lines(stream) if line["request_id"] == request_id]
    assert len(matching) == 1, matching
    return matching[0]


def test_one_line_per_request_whatever_the_outcome(
    client: TestClient, log_stream: io.StringIO
) -> None:
    sql = {"db_name": "main", "query": "SELECT ? AS v", "params": [PARAM_VALUE]}
    calls = [
        (client.get("/health"), 200, "ok", None, "/health"),
        (client.post("/database/execute", json=sql), 401, "denied", None, "/database/execute"),
        (
            client.post("/database/execute", json=sql, headers=auth("not-a-key")),
            401,
            "denied",
            None,
            "/database/execute",
        ),
        (
            client.post(
                "/database/execute",
                json={**sql, "db_name": "cache"},
                headers=auth(READER_KEY),
            ),
            403,
            "denied",
            "reader",
            "/database/execute",
        ),
        (
            client.post(
                "/database/execute",
                content=b'{"db_name": "main", "query": "' + b"x" * 5000 + b'"}',
                headers={**auth(ADMIN_KEY), "content-type": "application/json"},
            ),
            413,
            "invalid",
            None,
            "/database/execute",
        ),
        (client.get("/no/such/route", headers=auth(ADMIN_KEY)), 404, "invalid", None, None),
        (
            client.post(
                "/database/execute", json={**sql, "db_name": "nope"}, headers=auth(ADMIN_KEY)
            ),
            404,
            "invalid",
            "admin",
            "/database/execute",
        ),
        (
            client.post("/database/execute", json={"db_name": "main"}, headers=auth(ADMIN_KEY)),
            422,
            "invalid",
            "admin",  # dependencies run before the body is refused
            "/database/execute",
        ),
        (client.get("/boom"), 500, "error", None, "/boom"),
    ]
    seen_ids = []
    for response, status, outcome, key, path in calls:
        assert response.status_code == status, response.text
        if status == 500:
            # Starlette's outermost ServerErrorMiddleware answers, so no
            # X-Request-ID header; the audit line still has the id.
            [line] = [a for a in audit_lines(log_stream) if a["path"] == "/boom"]
        else:
            line = only_line_for(log_stream, response.headers["x-request-id"])
        seen_ids.append(line["request_id"])
        assert line.keys() >= FIELDS
        assert (line["method"], line["status"], line["outcome"], line["key"]) == (
            response.request.method,
            status,
            outcome,
            key,
        )
        assert line["path"] == (path or "/no/such/route")
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] >= 0
    assert len(audit_lines(log_stream)) == len(calls)
    assert len(set(seen_ids)) == len(calls)


def test_resources_kinds_and_error_type_are_noted(
    client: TestClient, log_stream: io.StringIO
) -> None:
    read = client.post(
        "/database/execute",
        json={"db_name": "main", "query": "SELECT ? AS v", "params": [PARAM_VALUE]},
        headers=auth(READER_KEY),
    )
    assert read.status_code == 200
    line = only_line_for(log_stream, read.headers["x-request-id"])
    assert (line["key"], line["resources"], line["kinds"]) == ("reader", ["db:main"], ["sql:read"])
    assert (line["outcome"], line["error_type"]) == ("ok", None)

    write = client.post(
        "/database/execute",
        json={"db_name": "main", "query": "SELEC 1"},
        headers=auth(ADMIN_KEY),
    )
    assert write.status_code == 400
    line = only_line_for(log_stream, write.headers["x-request-id"])
    assert (line["kinds"], line["outcome"], line["error_type"]) == (
        ["sql:write"],
        "invalid",
        "query_error",
    )

    kv = client.post(
        "/database/execute",
        json={"db_name": "cache", "query": "k", "params": {"operation": "get", "key": "k"}},
        headers=auth(ADMIN_KEY),
    )
    assert kv.status_code == 200
    line = only_line_for(log_stream, kv.headers["x-request-id"])
    assert (line["resources"], line["kinds"]) == (["db:cache"], ["memory"])


def test_named_operation_names_the_operation_and_its_database(
    client: TestClient, log_stream: io.StringIO
) -> None:
    response = client.post(
        "/operations/echo?token=" + QUERY_STRING_VALUE,
        json={"v": PARAM_VALUE},
        headers=auth(ADMIN_KEY),
    )
    assert response.status_code == 200, response.text
    line = only_line_for(log_stream, response.headers["x-request-id"])
    assert line["path"] == "/operations/{name}"
    assert line["resources"] == ["ops:echo", "db:main"]
    assert line["kinds"] == ["operation", "database"]

    refused = client.post("/operations/echo", json={"v": 1}, headers=auth(READER_KEY))
    assert refused.status_code == 403
    line = only_line_for(log_stream, refused.headers["x-request-id"])
    assert (line["resources"], line["outcome"]) == (["ops:echo"], "denied")


def test_batch_lists_every_resource_and_reports_partial_failure(
    client: TestClient, log_stream: io.StringIO
) -> None:
    response = client.post(
        "/batch/execute",
        json={
            "operations": [
                {"type": "database", "db_name": "main", "query": "SELECT ?", "params": [1]},
                {"type": "database", "db_name": "main", "query": "SELEC nonsense"},
                {"type": "operation", "name": "echo", "params": {"v": PARAM_VALUE}},
                {
                    "type": "database",
                    "db_name": "cache",
                    "query": "k",
                    "params": {"operation": "get", "key": "k"},
                },
            ]
        },
        headers=auth(ADMIN_KEY),
    )
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["failed"] == {"query_error": 1}
    line = only_line_for(log_stream, response.headers["x-request-id"])
    assert line["resources"] == ["db:main", "ops:echo", "db:cache"]
    assert line["kinds"] == ["batch", "sql:write", "operation", "memory"]
    assert (line["status"], line["outcome"]) == (200, "partial")


def test_values_keys_and_query_strings_never_reach_the_audit_line(
    client: TestClient, log_stream: io.StringIO
) -> None:
    client.post(
        "/database/execute?secret=" + QUERY_STRING_VALUE,
        json={"db_name": "main", "query": f"SELECT '{PARAM_VALUE}'", "params": [PARAM_VALUE]},
        headers=auth(ADMIN_KEY),
    )
    client.post("/operations/echo", json={"v": PARAM_VALUE}, headers=auth(READER_KEY))
    client.get("/stats", headers=auth(ADMIN_KEY + "-wrong"))
    lines = audit_lines(log_stream)
    assert len(lines) == 3
    text = json.dumps(lines)
    for value in (ADMIN_KEY, READER_KEY, PARAM_VALUE, QUERY_STRING_VALUE, "SELECT"):
        assert value not in text
    assert [line["key"] for line in lines] == ["admin", "reader", None]


def test_the_redactor_knows_the_keys(tmp_path: Path) -> None:
    """Belt and braces: were a key ever logged, the configured redactor masks it."""
    settings = parse_settings(
        f'[[gateway.api_keys]]\nname = "admin"\nkey = "{ADMIN_KEY}"\nscopes = []\n', env={}
    )
    assert ADMIN_KEY in secrets_of(settings)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (304, "ok"),
        (401, "denied"),
        (403, "denied"),
        (404, "invalid"),
        (413, "invalid"),
        (422, "invalid"),
        (429, "rate_limited"),
        (500, "error"),
        (502, "error"),
        (503, "unavailable"),
        (504, "timeout"),
    ],
)
def test_outcome_for_status(status: int, outcome: str) -> None:
    assert outcome_for(status) == outcome
