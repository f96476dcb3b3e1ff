"""``iogate run --output``: the results file, API calls included.

aiohttp names response headers with ``istr``, which orjson refuses as dict
keys: a batch with an API call used to crash after every operation had run,
leaving no results file. Batch ``api`` steps default to GET, as
``POST /api/execute`` does, and their method stays a closed set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from multidict import istr

from iogate.cli.run import encode_results
from iogate.core.result import Result

IOGATE = [sys.executable, "-m", "iogate.cli"]


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"method": "GET", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Upstream", "yes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IOGATE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def write_config(tmp_path: Path, upstream: str) -> Path:
    config = tmp_path / "iogate.toml"
    config.write_text(
        f'[databases.main]\ntype = "sqlite"\npath = "main.db"\n'
        f'[apis.up]\nbase_url = "{upstream}"\ntimeout = 5\n'
    )
    return config


def test_batch_with_api_calls_writes_every_result(tmp_path: Path, upstream: str) -> None:
    config = write_config(tmp_path, upstream)
    operations = [
        {"type": "api", "api_name": "up", "endpoint": "/items/1"},  # no method: GET
        {"type": "api", "api_name": "up", "method": "get", "endpoint": "/items/2"},
        {"type": "database", "db_name": "main", "query": "SELECT 1 AS one"},
        {"type": "database", "db_name": "main", "query": "SELECT * FROM no_such_table"},
        {"type": "api", "api_name": "up", "method": "BREW", "endpoint": "/pot"},
    ]
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps(operations))
    output = tmp_path / "results.json"

    result = run_cli(
        "run", "--config", str(config), "--output", str(output), str(batch), cwd=tmp_path
    )

    assert result.returncode == 1, result.stdout + result.stderr  # some failed
    assert "Traceback" not in result.stdout + result.stderr
    written = orjson.loads(output.read_bytes())
    assert [r["success"] for r in written] == [True, True, True, False, False]
    first, second = written[0], written[1]
    assert first["data"] == {"method": "GET", "path": "/v1/items/1"}
    assert first["operation"] == "GET"  # the metric label too
    assert second["data"]["path"] == "/v1/items/2"
    headers = {name.lower(): value for name, value in first["headers"].items()}
    assert headers["x-upstream"] == "yes"
    assert written[2]["data"] == [{"one": 1}]
    assert written[3]["error_type"] == "query_error"
    # The method is still a closed set: metric labels stay bounded.
    assert written[4]["error_type"] == "invalid_request"
    assert "method" in written[4]["error"]


def test_an_unwritable_output_stops_before_anything_runs(tmp_path: Path, upstream: str) -> None:
    config = write_config(tmp_path, upstream)
    batch = tmp_path / "batch.json"
    batch.write_text(
        json.dumps([{"type": "database", "db_name": "main", "query": "CREATE TABLE ran (x)"}])
    )
    output = tmp_path / "missing-dir" / "results.json"

    result = run_cli(
        "run", "--config", str(config), "--output", str(output), str(batch), cwd=tmp_path
    )

    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2, lines
    assert len(lines) == 1, lines
    assert "cannot write" in lines[0]
    import sqlite3

    if (tmp_path / "main.db").exists():
        with sqlite3.connect(tmp_path / "main.db") as conn:
            tables = conn.execute("SELECT name FROM sqlite_master WHERE name = 'ran'").fetchall()
        assert tables == []


def test_encoding_keeps_every_result_when_one_cannot_be_json() -> None:
    """What orjson refuses costs one Result its data, never the file."""
    with_istr = Result.ok({"a": 1}, status_code=200)
    with_istr.headers = {istr("Content-Type"): "application/json"}  # type: ignore[dict-item]
    huge = Result.ok([{"n": 2**70}])  # beyond 64 bits: e.g. a Python operation's value
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    too_deep = Result.ok(deep)
    fine = Result.ok([{"x": 1}])
    items = orjson.loads(encode_results([with_istr, huge, too_deep, fine]))
    assert items[0]["headers"] == {"Content-Type": "application/json"}
    assert items[0]["data"] == {"a": 1}
    for broken in items[1:3]:
        assert broken["success"] is False
        assert broken["data"] is None
        assert "JSON" in broken["error"]
    assert items[3]["data"] == [{"x": 1}]
