"""Fuzzing durable jobs in a real ``iogate serve`` (embedded: SQLite store, no
broker, chunks run in the gateway).

A write key (not admin: its SQL is guarded) submits bodies Hypothesis draws:
any JSON, and jobs of operations of every type with fields of any type,
references between them (``$ref``/``$fmt``, within and across chunks of 3)
and SQL that builds deep or odd values. Every answer must be below 500, every
refusal a problem+json whose ``status`` matches, and every job answered 202
must then *finish*: each operation gets a stored result, none of them an
``internal_error``, and its pages and its NDJSON stream stay readable. (A
result the store refused used to fail its chunk on every delivery, leaving
the job running forever.) Paths and query strings of the read routes are
fuzzed the same way.

Runs are derandomized and bounded (some 250 requests).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.support import WRITER, GatewayProcess

PROBLEM = "application/problem+json"
MAX_OPERATIONS = 12
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FINISH_SECONDS = 60


class Upstream(BaseHTTPRequestHandler):
    """Answers every call with a small JSON body, or a deep one under /deep."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        depth = 190 if self.path.startswith("/v1/deep") else 1
        raw = b"[" * depth + json.dumps({"path": self.path}).encode() + b"]" * depth
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:
        return None


class Accepted:
    """The jobs answered 202, checked once the fuzzing is over."""

    def __init__(self) -> None:
        self.jobs: dict[str, int] = {}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[httpx.Client, Accepted, bool]]:
    try:  # PostgreSQL builds the deepest values; without it the rest still runs
        postgres_url: str | None = request.getfixturevalue("postgres_url")
    except pytest.skip.Exception:
        postgres_url = None
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    workdir: Path = tmp_path_factory.mktemp("jobs-fuzz")
    config = f"""max_json_depth = 64
max_string_bytes = 4096

[[gateway.api_keys]]
name = "fuzzer"
key = "${{WRITER_KEY}}"
scopes = ["db:*:write", "api:*", "ops:*", "jobs"]

[jobs]
chunk_size = 3
max_operations = {MAX_OPERATIONS}
worker_chunks = 4

[databases.lite]
type = "sqlite"
path = "fuzz.db"

[databases.cache]
type = "memory"

[apis.upstream]
base_url = "http://127.0.0.1:{upstream.server_address[1]}/v1"
timeout = 2
retry = {{ attempts = 1 }}

[operations.echo]
database = "lite"
query = "SELECT ? AS v"
params = ["v"]
"""
    if postgres_url:
        config += f"""
[databases.pg]
type = "postgresql"
url = "{postgres_url}"
max_connections = 4
statement_timeout = 2
"""
    server = GatewayProcess(workdir, config)
    try:
        server.start()
        headers = {"Authorization": f"Bearer {WRITER}"}
        with httpx.Client(base_url=server.gateway.base, headers=headers, timeout=30) as client:
            yield client, Accepted(), postgres_url is not None
    finally:
        server.close()
        upstream.shutdown()
        upstream.server_close()
        thread.join(5)


def check(response: httpx.Response) -> Any:
    """No 5xx; a refusal is a problem+json with its own status. The JSON body."""
    status = response.status_code
    assert status < 500, f"{status} {response.text[:500]}"
    content_type = response.headers.get("content-type", "")
    if status >= 400:
        assert content_type.startswith(PROBLEM), (status, content_type, response.text[:300])
        document = response.json()
        assert document["status"] == status, document
        assert document["title"], document
        return document
    if content_type.startswith("application/json"):
        return response.json()
    return None


# -- strategies --------------------------------------------------------------------

TEXT = st.text(max_size=10)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
REFERENCE_PATHS = ["0.data", "0.data.0", "1.data.0.v", "prev.data.0.v", "0.status_code", "9.x"]
REFERENCES = st.one_of(
    st.builds(lambda ref: {"$ref": ref}, st.sampled_from(REFERENCE_PATHS) | TEXT),
    st.builds(lambda fmt: {"$fmt": fmt}, st.sampled_from(["k:{0.data}", "/{0.data.0.v}", "{"])),
)
FIELD = JSON | REFERENCES
# SQL a write key may or may not run, some building values JSON cannot hold.
SQL = {
    "lite": [
        "SELECT ? AS v",
        "SELECT json(?) AS v",
        "SELECT zeroblob(64) AS b",
        "SELECT 9223372036854775807 + ? AS v",
        "SELECT 1e308 * 10 AS inf",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50) "
        "SELECT x AS v FROM c",
        "INSERT INTO nowhere VALUES (?)",
        "CREATE TABLE t (x)",
        "PRAGMA query_only = 1",
    ],
    "pg": [
        "SELECT $1::text AS v",
        "SELECT $1::jsonb AS v",
        "SELECT repeat('[', 260)::text AS v",
        "SELECT (repeat('[', 260) || repeat(']', 260))::jsonb AS v",
        "SELECT (repeat('[', 248) || repeat(']', 248))::jsonb AS v",
        "SELECT 'NaN'::float8 AS v, 'infinity'::float8 AS w",
        "SELECT (2::numeric ^ 100) AS v",
        "SELECT set_config('a.b', 'c', false)",
    ],
    "cache": ["k1", "k2"],
}


@st.composite
def operations(draw: st.DrawFn, pg: bool) -> Any:
    kind = draw(st.sampled_from(["database", "database", "api", "transaction", "operation", "x"]))
    if kind == "x":
        return draw(JSON)
    step: dict[str, Any]
    if kind == "database":
        db = draw(st.sampled_from(["lite", "cache", "pg"] if pg else ["lite", "cache"]))
        step = {"type": "database", "db_name": db, "query": draw(st.sampled_from(SQL[db]))}
        if db == "cache":
            step["params"] = {
                "operation": draw(st.sampled_from(["get", "set", "incr", "delete"])),
                "value": draw(JSON),
            }
        else:
            step["params"] = draw(st.lists(SCALARS, max_size=1) | st.none())
    elif kind == "api":
        step = {
            "type": "api",
            "api_name": "upstream",
            "method": draw(st.sampled_from(["GET", "POST", "TRACE"])),
            "endpoint": draw(st.sampled_from(["/items", "/deep", "//evil", "/../x"]) | TEXT),
            "data": draw(JSON),
        }
    elif kind == "transaction":
        step = {
            "type": "transaction",
            "db_name": "lite",
            "queries": [{"query": draw(st.sampled_from(SQL["lite"])), "params": [1]}],
        }
    else:
        step = {"type": "operation", "name": "echo", "params": {"v": draw(JSON)}}
    if draw(st.booleans()):
        field = draw(st.sampled_from([*sorted(step), "id", "headers"]))
        step[field] = draw(FIELD)
    return step


@st.composite
def job_bodies(draw: st.DrawFn, pg: bool) -> Any:
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return draw(JSON)
    ops = draw(st.lists(operations(pg), min_size=1, max_size=MAX_OPERATIONS + 1))
    if ops and isinstance(ops[0], dict) and draw(st.booleans()):
        ops[0]["id"] = "prev"
    body: dict[str, Any] = {"operations": ops}
    if draw(st.booleans()):
        body["concurrency"] = draw(st.integers(min_value=0, max_value=101) | JSON)
    return body


# -- the properties ------------------------------------------------------------------


def test_any_job_body(gateway: tuple[httpx.Client, Accepted, bool]) -> None:
    client, accepted, pg = gateway

    @settings(FUZZ, max_examples=150)
    @given(body=job_bodies(pg))
    def submit(body: Any) -> None:
        response = client.post(
            "/batch/jobs",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        document = check(response)
        if response.status_code == 202:
            assert len(document["job_id"]) == 32, document
            assert document["total"] == len(body["operations"]), document
            accepted.jobs[document["job_id"]] = document["total"]

    submit()
    assert accepted.jobs, "no fuzzed job was accepted: the strategies miss valid jobs"


def test_every_accepted_job_finishes_readable(
    gateway: tuple[httpx.Client, Accepted, bool],
) -> None:
    client, accepted, _ = gateway
    deadline = time.monotonic() + FINISH_SECONDS
    for job_id, total in accepted.jobs.items():
        while True:
            progress = check(client.get(f"/batch/jobs/{job_id}?limit=0"))
            if progress["status"] == "done":
                break
            assert time.monotonic() < deadline, f"job {job_id} never finished: {progress}"
            time.sleep(0.05)  # the gateway runs it: polling another process
        assert progress["done"] == total
        page = check(client.get(f"/batch/jobs/{job_id}?limit=1000"))
        assert [r["index"] for r in page["results"]] == list(range(total))
        for result in page["results"]:
            assert isinstance(result["success"], bool), result
            assert result["error_type"] != "internal_error", result
        stream = client.get(f"/batch/jobs/{job_id}", headers={"Accept": "application/x-ndjson"})
        assert stream.status_code == 200, stream.text[:300]
        assert len([orjson.loads(line) for line in stream.content.splitlines()]) == total


@settings(FUZZ, max_examples=60)
@given(
    job_id=st.text(max_size=40) | st.sampled_from(["0" * 32, "a" * 300, "..", "%", "?x"]),
    query=st.dictionaries(st.sampled_from(["after", "limit", "x"]), TEXT, max_size=2),
    accept=st.sampled_from(["application/x-ndjson", "*/*", "text/html", ""]) | TEXT,
)
def test_any_job_path_and_query(
    gateway: tuple[httpx.Client, Accepted, bool], job_id: str, query: dict[str, str], accept: str
) -> None:
    client, accepted, _ = gateway
    known = next(iter(accepted.jobs), "0" * 32)
    for target in (quote(job_id, safe=""), known):
        url = f"/batch/jobs/{target}"
        headers = {"Accept": accept} if accept.isprintable() and accept.isascii() else {}
        check(client.get(url, params=query, headers=headers))
    check(client.delete(f"/batch/jobs/{quote(job_id, safe='')}"))
