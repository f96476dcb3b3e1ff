"""Structured logs: request ids end to end, JSON vs console, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from iogate.gateway.app import create_app
from iogate.gateway.logging import (
    ConsoleFormatter,
    JsonFormatter,
    Redactor,
    RequestIdMiddleware,
    configure_logging,
    install_operation_log,
    secrets_of,
    uninstall_operation_log,
)
from iogate.gateway.settings import Settings, parse_settings


def with_request_ids(app: FastAPI) -> FastAPI:
    """The app as ``create_app`` wires it; adds the middleware if it is not yet."""
    if not any(m.cls is RequestIdMiddleware for m in app.user_middleware):
        app.add_middleware(RequestIdMiddleware)
    return app


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    previous = root.level
    stream = io.StringIO()
    handler = configure_logging(level="INFO", json=True, stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(previous)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return parse_settings(
        f"""
[databases.main]
type = "sqlite"
path = "{tmp_path / "log.db"}"
""",
        env={},
    )


@pytest.fixture
def client(settings: Settings, log_stream: io.StringIO) -> Iterator[TestClient]:
    install_operation_log()
    try:
        with TestClient(
            with_request_ids(create_app(settings)), base_url="http://localhost"
        ) as test_client:
            yield test_client
    finally:
        uninstall_operation_log()


def test_incoming_request_id_is_returned_and_carried_into_operation_logs(
    client: TestClient, log_stream: io.StringIO
) -> None:
    response = client.post(
        "/database/execute",
        json={"db_name": "main", "query": "SELECT 1 AS one"},
        headers={"X-Request-ID": "client-req-42"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "client-req-42"
    lines = [r for r in records(log_stream) if r["request_id"] == "client-req-42"]
    operations = [r for r in lines if r["logger"] == "iogate.operation"]
    assert len(operations) == 1
    assert operations[0]["resource"] == "main"
    assert operations[0]["outcome"] == "ok"
    assert operations[0]["duration_ms"] >= 0
    access = [r for r in lines if r["logger"] == "iogate.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("POST", "/database/execute", 200)
    ]


def test_failed_operation_logs_a_warning_with_its_error_type(
    client: TestClient, log_stream: io.StringIO
) -> None:
    response = client.post("/database/execute", json={"db_name": "main", "query": "SELEC 1"})
    assert response.status_code == 400
    request_id = response.headers["x-request-id"]
    [operation] = [
        r
        for r in records(log_stream)
        if r["logger"] == "iogate.operation" and r["request_id"] == request_id
    ]
    assert (operation["level"], operation["outcome"]) == ("WARNING", "query_error")


@pytest.mark.parametrize(
    "incoming",
    ["", "has space", "x" * 129, "new\nline", "-leading-dash", 'quote"d'],
)
def test_insane_incoming_ids_are_replaced(client: TestClient, incoming: str) -> None:
    response = client.get("/health", headers={"X-Request-ID": incoming})
    generated = response.headers["x-request-id"]
    assert generated != incoming
    assert len(generated) == 32
    int(generated, 16)


def test_every_request_gets_its_own_id(client: TestClient, log_stream: io.StringIO) -> None:
    ids = {client.get("/health").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    logged = {r["request_id"] for r in records(log_stream) if r["logger"] == "iogate.access"}
    assert ids <= logged


def test_refusals_from_other_middleware_carry_the_id_too(client: TestClient) -> None:
    response = client.post(
        "/database/execute",
        content=b"x" * 2_000_000,
        headers={"content-type": "application/json", "X-Request-ID": "big-1"},
    )
    assert response.status_code == 413
    assert response.headers["x-request-id"] == "big-1"


def test_operation_lines_are_not_doubled_by_a_second_install(
    client: TestClient, log_stream: io.StringIO
) -> None:
    install_operation_log()
    response = client.post("/database/execute", json={"db_name": "main", "query": "SELECT 2"})
    request_id = response.headers["x-request-id"]
    operations = [
        r
        for r in records(log_stream)
        if r["logger"] == "iogate.operation" and r["request_id"] == request_id
    ]
    assert len(operations) == 1


def test_no_request_id_outside_a_request(log_stream: io.StringIO) -> None:
    logging.getLogger("iogate.test").info("background work")
    [record] = records(log_stream)
    assert record["request_id"] is None
    assert record["message"] == "background work"


# -- formats -----------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_when_not_a_terminal_readable_when_it_is() -> None:
    root = logging.getLogger()
    piped = io.StringIO()
    handler = configure_logging(stream=piped)
    assert isinstance(handler.formatter, JsonFormatter)
    terminal = FakeTerminal()
    replacement = configure_logging(stream=terminal)
    try:
        # Calling again replaces iogate's own handler, never adds a second.
        assert handler not in root.handlers
        assert isinstance(replacement.formatter, ConsoleFormatter)
        logging.getLogger("iogate.test").warning("disk %s", "full")
        line = terminal.getvalue().strip()
        assert "WARNING" in line
        assert line.endswith("iogate.test disk full")
        assert not line.startswith("{")
    finally:
        root.removeHandler(replacement)
        replacement.close()
        root.setLevel(logging.WARNING)


# -- secrets -------------------------------------------------------------------


def test_redactor_masks_dsn_passwords_tokens_and_known_secrets() -> None:
    redact = Redactor(["s3cr3t-api-key"])
    text = (
        "connect postgresql://app:hunter22@db:5432/x failed; "
        "header Authorization: Bearer abc.def-ghi; key s3cr3t-api-key; "
        "redis://:pw1234@cache:6379/0?password=other"
    )
    masked = redact(text)
    for secret in ("hunter22", "abc.def-ghi", "s3cr3t-api-key", "pw1234", "other"):
        assert secret not in masked
    assert "postgresql://app:***@db:5432/x" in masked
    assert "Bearer ***" in masked


def test_configured_secrets_never_reach_the_log(tmp_path: Path) -> None:
    settings = parse_settings(
        """
[[gateway.api_keys]]
name = "ci"
key = "${KEY}"
scopes = ["ops:*"]

[databases.pg]
type = "postgresql"
url = "postgresql://app:${PGPASS}@127.0.0.1:1/test"

[apis.ext]
base_url = "http://127.0.0.1:1/v1"
headers = { X-Api-Token = "${TOKEN}" }
""",
        env={"KEY": "ci-key-0123456789", "PGPASS": "pg-pass-xyz", "TOKEN": "tok-abcdefgh"},
    )
    secrets = secrets_of(settings)
    assert {"ci-key-0123456789", "pg-pass-xyz", "tok-abcdefgh"} <= set(secrets)
    stream = io.StringIO()
    handler = configure_logging(json=True, stream=stream, secrets=secrets)
    root = logging.getLogger()
    try:
        log = logging.getLogger("iogate.test")
        log.warning("key %s token %s pass %s", "ci-key-0123456789", "tok-abcdefgh", "pg-pass-xyz")
        try:
            raise RuntimeError("boom with pg-pass-xyz")
        except RuntimeError:
            log.exception("failed")
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(logging.WARNING)
    output = stream.getvalue()
    assert output.count("***") >= 4
    for secret in ("ci-key-0123456789", "tok-abcdefgh", "pg-pass-xyz"):
        assert secret not in output
    assert "RuntimeError" in output


def test_uvicorn_level_names_are_accepted() -> None:
    root = logging.getLogger()
    previous = root.level
    handler = configure_logging(level="trace", stream=io.StringIO())
    try:
        assert root.level == logging.DEBUG
        handler = configure_logging(level="warning", stream=io.StringIO())
        assert root.level == logging.WARNING
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(previous)
