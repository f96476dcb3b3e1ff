"""Tracing through a real ``iogate serve``: ``[tracing]`` with the file exporter.

The gateway's request span (FastAPI's own SERVER span) continues the caller's
W3C ``traceparent``; iogate's operation and batch spans are its children; an
API call forwards the trace to the upstream, a real local HTTP server that
records the headers it receives. The spans are read from the exporter's file
after SIGTERM, which also checks that the SDK flushes them at exit.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

STARTUP_SECONDS = 60


class Upstream(BaseHTTPRequestHandler):
    received: list[dict[str, str]] = []

    def do_GET(self) -> None:
        Upstream.received.append({k.lower(): v for k, v in self.headers.items()})
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    Upstream.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def serve(tmp_path: Path, config: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    path = tmp_path / "iogate.toml"
    path.write_text(f'[gateway]\nhost = "127.0.0.1"\nport = {port}\n{config}', encoding="utf-8")
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "iogate.cli", "serve", "--config", str(path)],
            cwd=tmp_path,
            env=os.environ.copy(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base, log
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)  # polling a subprocess: nothing to await


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_request_spans_continue_the_callers_trace_and_reach_the_upstream(
    tmp_path: Path, upstream: str
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    process, base, log = serve(
        tmp_path,
        f"""
[databases.main]
type = "sqlite"
path = "{tmp_path / "main.db"}"

[apis.ext]
base_url = "{upstream}"

[tracing]
enabled = true
exporter = "file"
file = "{spans_file}"
""",
    )
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{caller_span}-01"}
    try:
        with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
            sql = client.post(
                "/database/execute",
                json={"db_name": "main", "query": "SELECT 42 AS answer"},
            )
            api = client.post(
                "/api/execute", json={"api_name": "ext", "method": "GET", "endpoint": "/hi"}
            )
            batch = client.post(
                "/batch/execute",
                json={"operations": [{"type": "database", "db_name": "main", "query": "SELECT 1"}]},
            )
            # No traceparent: a trace of its own.
            alone = httpx.post(
                f"{base}/database/execute",
                json={"db_name": "main", "query": "SELECT 2"},
                timeout=30,
            )
        assert [r.status_code for r in (sql, api, batch, alone)] == [200] * 4, log.read_text()
    finally:
        stop(process)
    assert process.returncode == 0, log.read_text()

    spans = [json.loads(line) for line in spans_file.read_text().splitlines() if line.strip()]
    by_id = {span["context"]["span_id"]: span for span in spans}
    ours = [s for s in spans if s["context"]["trace_id"] == f"0x{trace_id}"]
    servers = [s for s in ours if s["kind"] == "SpanKind.SERVER"]
    # One request span per request sent with the traceparent, each its child.
    assert sorted(s["attributes"]["url.path"] for s in servers) == [
        "/api/execute",
        "/batch/execute",
        "/database/execute",
    ]
    assert {s["parent_id"] for s in servers} == {f"0x{caller_span}"}
    # Named after the route, also for requests DirectDispatch hands to their route.
    assert sorted(s["name"] for s in servers) == [
        "POST /api/execute",
        "POST /batch/execute",
        "POST /database/execute",
    ]
    assert all(s["attributes"]["http.response.status_code"] == 200 for s in servers)

    def server_of(span: dict[str, Any]) -> dict[str, Any]:
        while span["kind"] != "SpanKind.SERVER":
            span = by_id[span["parent_id"]]
        return span

    query = next(s for s in ours if s["name"] == f"SELECT {tmp_path / 'main.db'}")
    assert query["kind"] == "SpanKind.CLIENT"
    assert query["attributes"]["db.system"] == "sqlite"
    assert query["attributes"]["db.operation.name"] == "SELECT"
    assert "db.query.text" not in query["attributes"]
    assert server_of(query)["attributes"]["url.path"] == "/database/execute"

    api_span = next(s for s in ours if s["name"] == "GET")
    assert api_span["attributes"]["http.response.status_code"] == 200
    assert server_of(api_span)["attributes"]["url.path"] == "/api/execute"
    (received,) = Upstream.received
    _, upstream_trace, upstream_parent, _ = received["traceparent"].split("-")
    assert upstream_trace == trace_id
    assert f"0x{upstream_parent}" == api_span["context"]["span_id"]

    batch_span = next(s for s in ours if s["name"] == "batch")
    assert batch_span["attributes"]["iogate.batch.size"] == 1
    batch_query = next(s for s in ours if s.get("parent_id") == batch_span["context"]["span_id"])
    assert batch_query["attributes"]["db.system"] == "sqlite"
    assert server_of(batch_span)["attributes"]["url.path"] == "/batch/execute"

    others = [s for s in spans if s["context"]["trace_id"] != f"0x{trace_id}"]
    alone_server = next(s for s in others if s["kind"] == "SpanKind.SERVER")
    assert alone_server["parent_id"] is None


def test_a_file_exporter_without_a_file_is_one_config_line(tmp_path: Path) -> None:
    config = tmp_path / "iogate.toml"
    config.write_text('[tracing]\nenabled = true\nexporter = "file"\n', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "iogate.cli", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert 'tracing.file: required with exporter = "file"' in done.stderr
    assert "Traceback" not in done.stderr
