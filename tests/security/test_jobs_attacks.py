"""Durable jobs against a hostile key holder and a hostile upstream.

One real ``iogate serve`` for the module with the embedded job default (the
SQLite store ``iogate-jobs.db`` in its working directory, no broker, chunks
run in the gateway) and keys: ``writer`` (``db:lite:write``, ``api:up``,
``ops:echo``, ``jobs``), ``other`` (the same databases, another owner) and
``admin``. Small limits make every edge cheap to reach: ``[jobs]
chunk_size = 10`` (a chain of references may span 100 operations),
``max_operations = 20000``, ``max_body_bytes`` 4 MiB; ``[gateway]
max_json_depth = 16``, ``max_string_bytes = 4096``.

Every refusal must be a 4xx problem+json naming what was wrong (never a 5xx,
never a traceback), and every job runs with the access of the key that
submitted it. What the databases hold is read beside the gateway, on the
SQLite files themselves. A second gateway (``test_a_job_outlives_...``) is
reloaded without its owner's key and stopped mid-job.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.security.support import (
    ADMIN,
    READER,
    WRITER,
    GatewayProcess,
    RawSQLite,
    wait_for,
)

OTHER = READER  # the second key: its environment variable is READER_KEY
PROBLEM = "application/problem+json"
NDJSON = "application/x-ndjson"
CHUNK_SIZE = 10
MAX_CHAIN = CHUNK_SIZE * 10
MAX_OPERATIONS = 20_000
JOBS_MAX_BODY = 4 * 1_048_576
MAX_DEPTH = 16
MAX_STRING = 4096
JOB_SECONDS = 60  # a job of this module finishes well within it
SELECT_ONE = {"type": "database", "db_name": "lite", "query": "SELECT 1 AS one"}
STORE = "iogate-jobs.db"  # the embedded default, in the gateway's working directory


def fetch_one(path: Path, query: str, *args: Any) -> tuple[Any, ...]:
    """One row, read beside the gateway on the SQLite file itself."""
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        row: tuple[Any, ...] = db.execute(query, args).fetchone()
    return row


def keys(scopes: dict[str, list[str]]) -> str:
    env = {"writer": "WRITER_KEY", "other": "READER_KEY", "admin": "ADMIN_KEY"}
    return "".join(
        f'\n[[gateway.api_keys]]\nname = "{name}"\nkey = "${{{env[name]}}}"\n'
        f"scopes = {json.dumps(granted)}\n"
        for name, granted in scopes.items()
    )


# -- upstreams ----------------------------------------------------------------------


class Hits:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def add(self, path: str) -> None:
        with self.lock:
            self.paths.append(path)


def http_server(answer: Any) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            answer(self)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def reply(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
    raw = orjson.dumps({"path": handler.path})
    handler.send_response(status)
    for name, value in {**headers, "content-length": str(len(raw))}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(raw)


class Upstreams:
    """``up``, the configured API (its ``/v1/redir`` redirects to ``evil``),
    and ``evil``, which no job may ever reach."""

    def __init__(self) -> None:
        self.up_hits = Hits()
        self.evil_hits = Hits()

        def evil(handler: BaseHTTPRequestHandler) -> None:
            self.evil_hits.add(handler.path)
            reply(handler, 200, {"content-type": "application/json"})

        self.evil, evil_thread = http_server(evil)
        self.evil_port = self.evil.server_address[1]

        def up(handler: BaseHTTPRequestHandler) -> None:
            self.up_hits.add(handler.path)
            if handler.path.endswith("/redir"):
                reply(handler, 302, {"location": f"http://127.0.0.1:{self.evil_port}/stolen"})
            else:
                reply(handler, 200, {"content-type": "application/json"})

        self.up, up_thread = http_server(up)
        self.threads = [evil_thread, up_thread]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.up.server_address[1]}/v1"

    def close(self) -> None:
        for server in (self.up, self.evil):
            server.shutdown()
            server.server_close()
        for thread in self.threads:
            thread.join(5)


# -- the gateway --------------------------------------------------------------------


class Jobs:
    """The module's gateway, spoken to as each key."""

    def __init__(self, server: GatewayProcess, workdir: Path, pg: bool) -> None:
        self.server = server
        self.workdir = workdir
        self.pg = pg
        self.client = server.gateway.client

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def submit(
        self, body: Any, *, key: str = WRITER, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.client.post(
            "/batch/jobs",
            content=json.dumps(body).encode(),  # integers past 64 bits too
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                **(headers or {}),
            },
            timeout=60,
        )

    def job_id(self, operations: list[Any], *, key: str = WRITER, **options: Any) -> str:
        response = self.submit({"operations": operations, **options}, key=key)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    def get(self, path: str, *, key: str = WRITER, accept: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        if accept is not None:
            headers["Accept"] = accept
        return self.client.get(path, headers=headers, timeout=60)

    def delete(self, path: str, *, key: str = WRITER) -> httpx.Response:
        return self.client.delete(path, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def wait(self, job_id: str, *, key: str = WRITER) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            response = self.get(f"/batch/jobs/{job_id}?limit=0", key=key)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body if body["status"] in ("done", "cancelled") else None

        return wait_for(finished, timeout=JOB_SECONDS, what=f"job {job_id}")

    def results(self, job_id: str) -> list[dict[str, Any]]:
        response = self.get(f"/batch/jobs/{job_id}", accept=NDJSON)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(NDJSON)
        return [orjson.loads(line) for line in response.content.splitlines()]

    def stored_jobs(self) -> int:
        store = self.workdir / STORE
        if not store.exists():
            return 0
        (count,) = fetch_one(store, "SELECT count(*) FROM iogate_jobs")
        return int(count)

    def status_mb(self, field: str) -> float:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} for process {self.pid}")

    def reset_peak(self) -> float:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as clear:
                clear.write("5")
        except OSError:
            pytest.skip(f"cannot reset the peak RSS of process {self.pid}")
        return self.status_mb("VmRSS")


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    servers = Upstreams()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="module")
def jobs(
    tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams, request: pytest.FixtureRequest
) -> Iterator[Jobs]:
    try:  # PostgreSQL only builds the values JSON cannot hold; the rest needs none
        postgres_url: str | None = request.getfixturevalue("postgres_url")
    except pytest.skip.Exception:
        postgres_url = None
    workdir = tmp_path_factory.mktemp("jobs-attacks")
    with contextlib.closing(sqlite3.connect(workdir / "lite.db")) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER)")
    sqlite3.connect(workdir / "secret.db").close()
    writer = ["db:lite:write", "api:up", "ops:echo", "jobs"]
    if postgres_url:
        writer.append("db:pg:write")
    scopes = {"writer": writer, "other": ["db:lite:write", "jobs"], "admin": ["db:*:admin", "jobs"]}
    config = f"""max_json_depth = {MAX_DEPTH}
max_string_bytes = {MAX_STRING}
{keys(scopes)}
[jobs]
chunk_size = {CHUNK_SIZE}
max_operations = {MAX_OPERATIONS}
max_body_bytes = {JOBS_MAX_BODY}

[databases.lite]
type = "sqlite"
path = "lite.db"

[databases.secret]
type = "sqlite"
path = "secret.db"

[apis.up]
base_url = "{upstreams.base_url}"
timeout = 5
retry = {{ attempts = 1 }}

[operations.echo]
database = "lite"
query = "SELECT ? AS v"
params = ["v"]
"""
    if postgres_url:
        config += f'\n[databases.pg]\ntype = "postgresql"\nurl = "{postgres_url}"\n'
        config += "max_connections = 2\nstatement_timeout = 10\n"
    server = GatewayProcess(workdir, config)
    try:
        server.start()
        yield Jobs(server, workdir, pg=postgres_url is not None)
    finally:
        server.close()


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """A 4xx problem+json with ``status``, whose detail names each of ``words``."""
    assert response.status_code == status, f"{response.status_code} {response.text[:500]}"
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status, body
    assert body["title"], body
    text = json.dumps(body)
    assert "Traceback" not in text, body
    for word in words:
        assert word in text, body
    return body


# -- what a job body may be -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "named"),
    [
        (b"[1, 2]", 422, "operations"),
        (b'"operations"', 422, "operations"),
        (b"42", 422, "operations"),
        (b"null", 422, "operations"),
        (b"true", 422, "operations"),
        (b"{}", 422, "operations"),
        (b'{"operations": {"0": {}}}', 422, "non-empty list"),
        (b'{"operations": "SELECT 1"}', 422, "non-empty list"),
        (b'{"operations": null}', 422, "non-empty list"),
        (b'{"operations": []}', 422, "non-empty list"),
        (b'{"operations": [{}], "atomic": true}', 422, "concurrency optional"),
        (b'{"operations": [{}], "__proto__": {}}', 422, "concurrency optional"),
        (b"", 400, "not JSON"),
        (b"{not json", 400, "not JSON"),
        (b'{"operations": [NaN]}', 400, "not JSON"),
        (b'{"operations": [1]} trailing', 400, "not JSON"),
        (b"\xff\xfe{}", 400, "not JSON"),
    ],
)
def test_a_body_that_is_not_a_job_is_refused_and_recorded_nowhere(
    jobs: Jobs, raw: bytes, status: int, named: str
) -> None:
    before = jobs.stored_jobs()
    response = jobs.client.post(
        "/batch/jobs",
        content=raw,
        headers={"Authorization": f"Bearer {WRITER}", "Content-Type": "application/json"},
    )
    assert_problem(response, status, named)
    assert jobs.stored_jobs() == before


@pytest.mark.parametrize(
    "concurrency",
    ["5", 5.0, 5.5, True, False, None, [], {}, [5], 0, -1, 101, 10**30, -(10**30), "1e2"],
    ids=repr,
)
def test_concurrency_of_every_wrong_type(jobs: Jobs, concurrency: Any) -> None:
    response = jobs.submit({"operations": [SELECT_ONE], "concurrency": concurrency})
    assert_problem(response, 422, "concurrency must be an integer from 1 to 100")


@pytest.mark.parametrize("concurrency", [1, 100])
def test_concurrency_at_its_bounds_is_accepted(jobs: Jobs, concurrency: int) -> None:
    job_id = jobs.job_id([SELECT_ONE] * 3, concurrency=concurrency)
    assert jobs.wait(job_id)["done"] == 3


def test_operations_that_are_not_objects_fail_alone(jobs: Jobs) -> None:
    """A malformed operation is its own failed result, as in a batch."""
    job_id = jobs.job_id([1, "x", None, [], {"type": 7}, {"type": "nope"}, SELECT_ONE])
    assert jobs.wait(job_id)["failed"] == 6
    results = jobs.results(job_id)
    assert [r["error_type"] for r in results[:6]] == ["invalid_request"] * 6
    assert results[6]["data"] == [{"one": 1}]


# -- limits ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_job(jobs: Jobs) -> str:
    """A job of exactly max_operations operations, each with a 1 kB result
    (about 23 MB of NDJSON in all), run to the end."""
    one_kb = {"type": "database", "db_name": "lite", "query": "SELECT hex(zeroblob(500)) AS s"}
    job_id = jobs.job_id([one_kb] * MAX_OPERATIONS, concurrency=50)
    assert jobs.wait(job_id)["done"] == MAX_OPERATIONS
    return job_id


def test_max_operations_is_accepted_and_one_more_refused(jobs: Jobs, full_job: str) -> None:
    before = jobs.stored_jobs()
    response = jobs.submit({"operations": [SELECT_ONE] * (MAX_OPERATIONS + 1)})
    body = assert_problem(response, 422, "max_operations", str(MAX_OPERATIONS))
    assert body["limit"] == "max_operations"
    assert jobs.stored_jobs() == before


def test_a_body_over_jobs_max_body_bytes_is_413(jobs: Jobs) -> None:
    body = orjson.dumps({"operations": [SELECT_ONE] * 70_000})
    assert len(body) > JOBS_MAX_BODY
    headers = {"Authorization": f"Bearer {WRITER}", "Content-Type": "application/json"}
    declared = jobs.client.post("/batch/jobs", content=body, headers=headers)
    assert assert_problem(declared, 413, "jobs.max_body_bytes")["limit"] == "jobs.max_body_bytes"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    streamed = httpx.post(
        f"{jobs.server.gateway.base}/batch/jobs", content=chunked(), headers=headers, timeout=60
    )
    assert_problem(streamed, 413, "jobs.max_body_bytes")


def test_nesting_and_string_limits_apply_to_jobs(jobs: Jobs) -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]
    op = {**SELECT_ONE, "query": "SELECT ? AS v", "params": [deep]}
    too_deep = jobs.submit({"operations": [op]})
    assert assert_problem(too_deep, 422, "max_json_depth")["limit"] == "max_json_depth"
    long = {**SELECT_ONE, "query": "SELECT '" + "x" * MAX_STRING + "' AS v"}
    too_long = jobs.submit({"operations": [long]})
    assert assert_problem(too_long, 422, "max_string_bytes")["limit"] == "max_string_bytes"


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_not_sent_as_json_is_refused(jobs: Jobs, content_type: str | None) -> None:
    """A form a page on another origin can post without a preflight must not
    submit a job (with no keys configured, that would be anyone's SQL), nor
    slip past max_json_depth, which is checked on JSON bodies only."""
    deep = "[" * 900 + "]" * 900
    for number, body in enumerate(
        (
            orjson.dumps({"operations": [SELECT_ONE]}),
            b'{"operations": ' + deep.encode() + b"}",
        )
    ):
        before = jobs.stored_jobs()
        headers = {"Authorization": f"Bearer {WRITER}", "Origin": "https://evil.example"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = jobs.client.post("/batch/jobs", content=body, headers=headers)
        if content_type is None and number == 1:  # no type: the JSON limits apply first
            assert_problem(response, 422, "max_json_depth")
        else:
            assert_problem(response, 415, "application/json")
        assert jobs.stored_jobs() == before


def test_a_chain_of_references_may_span_ten_chunks_and_no_more(jobs: Jobs) -> None:
    def chain(length: int, start: int = 0) -> list[Any]:
        """Operations start.. start + length - 1, each referring to the one before."""
        ops: list[Any] = [{**SELECT_ONE, "query": "SELECT 1 AS v"}]
        for index in range(start + 1, start + length):
            ops.append(
                {
                    **SELECT_ONE,
                    "query": "SELECT ? + 1 AS v",
                    "params": [{"$ref": f"{index - 1}.data.0.v"}],
                }
            )
        return ops

    before = jobs.stored_jobs()
    refused = jobs.submit({"operations": chain(MAX_CHAIN + 1)})
    assert_problem(refused, 422, "chunk_size", str(MAX_CHAIN))
    assert jobs.stored_jobs() == before
    job_id = jobs.job_id(chain(MAX_CHAIN) + chain(5, start=MAX_CHAIN))  # and a second chunk
    progress = jobs.wait(job_id)
    assert (progress["failed"], progress["chunks"]) == (0, 2)
    last = jobs.get(f"/batch/jobs/{job_id}?after={MAX_CHAIN - 2}&limit=1").json()["results"]
    assert last[0]["data"] == [{"v": MAX_CHAIN}]


# -- job ids, paging, content negotiation ---------------------------------------------------


@pytest.mark.parametrize(
    "job_id",
    [
        "nothex",
        "0" * 32,
        "A" * 32,
        "a" * 8000,
        "x' OR '1'='1",
        "x%27%3B%20DROP%20TABLE%20iogate_jobs%3B--",
        "1 UNION SELECT id FROM iogate_jobs",
        "%00",
        "x%0Ay",
        "%C3%A9t%C3%A9",
        "%FF%FE",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "*",
        "%25",
    ],
)
def test_a_job_id_of_any_shape_is_a_404(jobs: Jobs, job_id: str) -> None:
    before = jobs.stored_jobs()
    path = f"/batch/jobs/{job_id}"
    for response in (jobs.get(path), jobs.get(path, accept=NDJSON), jobs.delete(path)):
        assert_problem(response, 404)
    assert jobs.stored_jobs() == before  # the store's tables are all there, untouched


@pytest.mark.parametrize(
    "query",
    [
        "after=abc",
        "after=",
        "after=1e3",
        "after=-2",
        "after=9223372036854775808",
        "after=99999999999999999999999999",
        "after=%00",
        "limit=-1",
        "limit=1001",
        "limit=abc",
        "limit=1.5",
        "limit=99999999999999999999999999",
    ],
)
def test_paging_values_out_of_range_are_422(jobs: Jobs, query: str) -> None:
    job_id = jobs.job_id([SELECT_ONE])
    name = query.partition("=")[0]
    for accept in (None, NDJSON):
        response = jobs.get(f"/batch/jobs/{job_id}?{query}", accept=accept)
        assert_problem(response, 422, f"query.{name}")


def test_paging_at_its_bounds(jobs: Jobs) -> None:
    job_id = jobs.job_id([SELECT_ONE] * 3)
    jobs.wait(job_id)
    top = jobs.get(f"/batch/jobs/{job_id}?after=9223372036854775807&limit=1000")
    assert top.status_code == 200, top.text
    assert (top.json()["results"], top.json()["next_after"]) == ([], None)
    first = jobs.get(f"/batch/jobs/{job_id}?after=-1&limit=1").json()
    assert [r["index"] for r in first["results"]] == [0]
    assert first["next_after"] == 0
    none = jobs.get(f"/batch/jobs/{job_id}?limit=0").json()
    assert (none["results"], none["next_after"]) == ([], None)


@pytest.mark.parametrize(
    ("accept", "ndjson"),
    [
        ("application/x-ndjson", True),
        ("APPLICATION/X-NDJSON", True),
        ("text/html, application/x-ndjson;q=0.5", True),
        ("application/x-ndjson; q=0", False),
        ("application/x-ndjson;q=0.0, application/json", False),
        ("application/x-ndjsonx", False),
        ("application/x-ndjson;q=abc", False),
        ("application/json", False),
        ("*/*", False),
        ("text/html", False),
        ("", False),
        ("x" * 4000, False),
    ],
)
def test_accept_header_tricks(jobs: Jobs, accept: str, ndjson: bool) -> None:
    job_id = jobs.job_id([SELECT_ONE] * 2)
    jobs.wait(job_id)
    response = jobs.get(f"/batch/jobs/{job_id}", accept=accept)
    assert response.status_code == 200, response.text
    if ndjson:
        assert response.headers["content-type"].startswith(NDJSON)
        assert [orjson.loads(line)["index"] for line in response.content.splitlines()] == [0, 1]
    else:
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["total"] == 2


# -- whose job it is -------------------------------------------------------------------------


def test_another_keys_job_is_a_404_like_one_that_does_not_exist(jobs: Jobs) -> None:
    slow = {
        **SELECT_ONE,
        "query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        "WHERE x < 200000) SELECT count(*) AS n FROM c",
    }
    job_id = jobs.job_id([slow] * 40, concurrency=1)
    missing = "0123456789abcdef0123456789abcdef"
    for key in (OTHER, ADMIN):  # not even an admin key: a job belongs to its submitter
        for path in (f"/batch/jobs/{job_id}", f"/batch/jobs/{job_id}?after=0&limit=5"):
            theirs = assert_problem(jobs.get(path, key=key), 404)
            nobodys = assert_problem(jobs.get(path.replace(job_id, missing), key=key), 404)
            assert theirs["title"] == nobodys["title"]
        assert_problem(jobs.get(f"/batch/jobs/{job_id}", key=key, accept=NDJSON), 404)
        assert_problem(jobs.delete(f"/batch/jobs/{job_id}", key=key), 404)
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": WRITER}):
        refused = jobs.client.get(f"/batch/jobs/{job_id}", headers=headers)
        assert_problem(refused, 401)
    # The other keys' DELETEs cancelled nothing.
    assert jobs.get(f"/batch/jobs/{job_id}?limit=0").json()["status"] in ("queued", "running")
    assert jobs.delete(f"/batch/jobs/{job_id}").json()["status"] == "cancelled"


def test_cancelling_twice_and_cancelling_a_finished_job(jobs: Jobs) -> None:
    slow = {
        **SELECT_ONE,
        "query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        "WHERE x < 200000) SELECT count(*) AS n FROM c",
    }
    running = jobs.job_id([slow] * 40, concurrency=1)
    first = jobs.delete(f"/batch/jobs/{running}")
    second = jobs.delete(f"/batch/jobs/{running}")
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["status"] == second.json()["status"] == "cancelled"
    assert second.json()["finished_at"] == first.json()["finished_at"]  # not cancelled again

    finished = jobs.job_id([SELECT_ONE])
    done = jobs.wait(finished)
    after = jobs.delete(f"/batch/jobs/{finished}")
    assert after.status_code == 200, after.text
    assert after.json() == {k: done[k] for k in after.json()}  # a finished job stays as it was
    assert jobs.results(finished)[0]["data"] == [{"one": 1}]


# -- what a job's SQL may do -----------------------------------------------------------------


def test_a_job_naming_a_database_the_key_cannot_reach_is_refused_whole(jobs: Jobs) -> None:
    before = jobs.stored_jobs()
    for db in ("secret", "nope"):
        op = {"type": "database", "db_name": db, "query": "SELECT 1"}
        assert_problem(jobs.submit({"operations": [SELECT_ONE, op]}), 403, f"db:{db}:write")
        transaction = {"type": "transaction", "db_name": db, "queries": [{"query": "SELECT 1"}]}
        assert_problem(jobs.submit({"operations": [transaction]}), 403)
    assert_problem(jobs.submit({"operations": [SELECT_ONE]}, key=ADMIN.upper()), 401)
    assert jobs.stored_jobs() == before


def test_the_runner_applies_the_submitting_keys_guard(jobs: Jobs) -> None:
    """A write key's job runs data statements only, on the runner too: no DDL,
    no ATTACH of another database file, no PRAGMA, no VACUUM INTO, no
    transaction control; not even when the SQL comes from an earlier result."""
    stolen = jobs.workdir / "stolen.db"
    attacks = [
        "CREATE TABLE evil (x)",
        "DROP TABLE items",
        "ALTER TABLE items ADD COLUMN evil",
        "CREATE TRIGGER evil AFTER INSERT ON items BEGIN DELETE FROM items; END",
        "CREATE TEMP TABLE evil (x)",
        f"ATTACH DATABASE '{jobs.workdir / 'secret.db'}' AS secret",
        f"ATTACH DATABASE '{stolen}' AS stolen",
        f"VACUUM INTO '{stolen}'",
        "PRAGMA writable_schema = 1",
        "PRAGMA journal_mode = DELETE",
        "BEGIN",
        "COMMIT",
        "SELECT load_extension('/tmp/evil.so')",
        "INSERT INTO items (v) VALUES (1); DROP TABLE items",
    ]
    ops: list[Any] = [{**SELECT_ONE, "query": sql} for sql in attacks]
    ops.append(
        {
            "type": "transaction",
            "db_name": "lite",
            "queries": [
                {"query": "INSERT INTO items (v) VALUES (7)"},
                {"query": "DROP TABLE items"},
            ],
        }
    )
    ops.append({**SELECT_ONE, "id": "q", "query": "SELECT 'DROP TABLE items' AS sql"})
    ops.append({**SELECT_ONE, "query": {"$ref": "q.data.0.sql"}})
    job_id = jobs.job_id(ops)
    assert jobs.wait(job_id)["failed"] == len(ops) - 1
    results = jobs.results(job_id)
    refused = [r for r in results if not r["success"]]
    assert all(r["error_type"] == "forbidden_statement" for r in refused), refused
    lite = RawSQLite(jobs.workdir / "lite.db")
    try:
        names = {row[0] for row in lite.fetch("SELECT name FROM sqlite_master")}
        assert names == {"items"}, names
        assert lite.fetchval("PRAGMA journal_mode") == "wal"
        assert lite.fetchval("SELECT count(*) FROM items WHERE v = 7") == 0
    finally:
        lite.close()
    assert not stolen.exists()


def test_an_admin_keys_job_runs_trusted(jobs: Jobs) -> None:
    """The contrast: the guard comes from the key, not from the job route."""
    table = f"admin_{time.monotonic_ns()}"
    job_id = jobs.job_id([{**SELECT_ONE, "query": f"CREATE TABLE {table} (x)"}], key=ADMIN)
    assert jobs.wait(job_id, key=ADMIN)["failed"] == 0
    lite = RawSQLite(jobs.workdir / "lite.db")
    try:
        assert lite.fetchval("SELECT count(*) FROM sqlite_master WHERE name = ?", (table,)) == 1
        lite.execute(f"DROP TABLE {table}")
    finally:
        lite.close()


def test_named_operations_run_in_a_job(jobs: Jobs) -> None:
    """The embedded runner finds [operations.NAME] although no /batch/execute
    or /operations request has loaded them in this gateway yet."""
    job_id = jobs.job_id([{"type": "operation", "name": "echo", "params": {"v": 5}}])
    assert jobs.wait(job_id)["failed"] == 0
    assert jobs.results(job_id)[0]["data"] == [{"v": 5}]
    refused = jobs.submit({"operations": [{"type": "operation", "name": "other", "params": {}}]})
    assert_problem(refused, 403, "ops:other")


# -- what a job's API calls may reach ------------------------------------------------------------


def test_api_operations_never_leave_the_configured_base_url(
    jobs: Jobs, upstreams: Upstreams
) -> None:
    evil = f"127.0.0.1:{upstreams.evil_port}"
    endpoints: list[Any] = [
        f"http://{evil}/x",
        f"//{evil}/x",
        f"@{evil}/x",
        f"\\\\{evil}/x",
        "/../x",
        "/%2e%2e/x",
        "/..%2fx",
        "/a\r\nHost: evil",
        "/redir",
        {"$fmt": "{where.data.0.u}/x"},
        {"$fmt": "/{where.data.0.u}"},
    ]
    ops: list[Any] = [{**SELECT_ONE, "id": "where", "query": f"SELECT '//{evil}' AS u"}]
    ops += [{"type": "api", "api_name": "up", "method": "GET", "endpoint": e} for e in endpoints]
    ops.append({"type": "api", "api_name": "up", "endpoint": "/h", "headers": {"Host": evil}})
    ops.append({"type": "api", "api_name": "up", "endpoint": "/fine"})
    job_id = jobs.job_id(ops)
    jobs.wait(job_id)
    results = jobs.results(job_id)
    assert results[-1]["success"] is True, results[-1]
    assert results[-1]["data"] == {"path": "/v1/fine"}
    for result in results[1:-1]:
        assert result["success"] is False, result
        assert result["error_type"] in ("invalid_request", "http_error"), result
    assert upstreams.evil_hits.paths == []
    assert sorted(upstreams.up_hits.paths) == ["/v1/fine", "/v1/redir"]


# -- a hostile upstream, a hostile database value ------------------------------------------------


def test_a_result_json_cannot_hold_is_stored_as_a_failure(jobs: Jobs) -> None:
    """PostgreSQL builds a jsonb value nested past the 254 levels orjson
    writes: that operation fails with a clear error, the chunk finishes, and
    the job's pages and stream stay readable. The insert beside it ran once
    (a chunk refused by the store would be retried, re-running it)."""
    if not jobs.pg:
        pytest.skip("no PostgreSQL: nothing here builds such a value")
    ops: list[Any] = [{**SELECT_ONE, "query": "INSERT INTO items (v) VALUES (424242)"}]
    for depth in (240, 250, 252, 300):
        deep = "[" * depth + "]" * depth
        ops.append({"type": "database", "db_name": "pg", "query": f"SELECT '{deep}'::jsonb AS j"})
    ops.append(SELECT_ONE)
    job_id = jobs.job_id(ops)
    progress = jobs.wait(job_id)
    assert progress["status"] == "done", progress
    page = jobs.get(f"/batch/jobs/{job_id}?limit=1000")
    assert page.status_code == 200, page.text
    results = page.json()["results"]
    assert [r["success"] for r in results] == [True, True, False, False, False, True]
    for failed in results[2:5]:
        assert failed["error_type"] == "query_error"
        assert "cannot be stored as JSON" in failed["error"]
    assert len(jobs.results(job_id)) == len(ops)
    lite = RawSQLite(jobs.workdir / "lite.db")
    try:
        assert lite.fetchval("SELECT count(*) FROM items WHERE v = 424242") == 1
    finally:
        lite.close()


# -- size and load -------------------------------------------------------------------------------


def test_streaming_a_large_job_to_a_slow_reader_keeps_memory_bounded(
    jobs: Jobs, full_job: str
) -> None:
    before = jobs.reset_peak()
    received = lines = 0
    with jobs.client.stream(
        "GET",
        f"/batch/jobs/{full_job}",
        headers={"Authorization": f"Bearer {WRITER}", "Accept": NDJSON},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for piece in response.iter_raw(16384):
            received += len(piece)
            lines += piece.count(b"\n")
            time.sleep(0.001)  # a slow reader: the gateway must wait, not buffer
    growth = jobs.status_mb("VmHWM") - before
    assert lines == MAX_OPERATIONS
    assert received > 20_000_000
    assert growth < 15, f"gateway peak RSS grew {growth:.0f} MB streaming {received / 1e6:.0f} MB"


def test_many_concurrent_submissions(jobs: Jobs) -> None:
    def submit(number: int) -> str:
        ops = [{**SELECT_ONE, "query": "SELECT ? AS n", "params": [number]}] * 25
        response = httpx.post(  # a client per call: one per thread
            f"{jobs.server.gateway.base}/batch/jobs",
            json={"operations": ops, "concurrency": 5},
            headers={"Authorization": f"Bearer {WRITER}"},
            timeout=60,
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(submit, range(32)))
    assert len(set(ids)) == 32
    for number, job_id in enumerate(ids):
        assert jobs.wait(job_id)["done"] == 25
        results = jobs.results(job_id)
        assert {r["data"][0]["n"] for r in results} == {number}


# -- a key removed, a gateway stopped ------------------------------------------------------------


def test_a_job_outlives_its_key_with_its_access_and_a_stop_replays_only_what_was_in_flight(
    tmp_path: Path,
) -> None:
    """The writer's job keeps running after a reload removes the writer's key,
    still as a write key (its DDL is refused); the writer can no longer read
    it, and no other key can. Then the gateway is stopped (SIGTERM) mid-job
    and started again, and the job resumes. The reload and the stop each
    apply at most one insert twice, the one in flight (worker_chunks = 1,
    concurrency = 1): a stopping runner stores the results it already has."""
    with contextlib.closing(sqlite3.connect(tmp_path / "lite.db")) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER)")
    body = """
[jobs]
chunk_size = 50
worker_chunks = 1

[databases.lite]
type = "sqlite"
path = "lite.db"
"""
    with_writer = keys({"writer": ["db:lite:write", "jobs"], "admin": ["db:*:admin", "jobs"]})
    without = keys({"admin": ["db:*:admin", "jobs"]})
    total = 400
    # Some 5 ms of work each, so the job is still running when the gateway
    # stops; each text differs, so each insert is its own transaction (a run
    # of one statement is executed as one group, all or nothing).
    insert = (
        "INSERT INTO items (v) SELECT ? WHERE (SELECT count(*) FROM (WITH RECURSIVE "
        "c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {}) SELECT x FROM c)) > 0"
    )
    ops: list[Any] = [
        {**SELECT_ONE, "query": insert.format(15000 + i), "params": [i]} for i in range(total)
    ]
    ops.append({**SELECT_ONE, "query": "CREATE TABLE evil (x)"})
    server = GatewayProcess(tmp_path, with_writer + body)
    try:
        gateway = server.start()
        reply = gateway.post("/batch/jobs", {"operations": ops, "concurrency": 1}, key=WRITER)
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]
        store = tmp_path / STORE

        def done() -> int:
            count, status = fetch_one(
                store, "SELECT done, status FROM iogate_jobs WHERE id = ?", job_id
            )
            assert status != "done", "the job finished before the gateway was stopped"
            return int(count)

        wait_for(lambda: done() >= 40, timeout=JOB_SECONDS, what="40 operations")
        server.config.write_text(
            server.config.read_text(encoding="utf-8").replace(with_writer, without),
            encoding="utf-8",
        )
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        path = f"/batch/jobs/{job_id}"
        writer = {"Authorization": f"Bearer {WRITER}"}
        wait_for(
            lambda: gateway.client.get(path, headers=writer).status_code == 401,
            timeout=30,
            what="the reload",
        )
        assert_problem(gateway.client.get(path, headers={"Authorization": f"Bearer {ADMIN}"}), 404)
        wait_for(lambda: done() >= 150, timeout=JOB_SECONDS, what="150 operations")
        replayed_by_the_reload = duplicates(tmp_path)
        stopped_at = done()
        server.stop()  # SIGTERM, mid-job
        (kept,) = fetch_one(store, "SELECT done FROM iogate_jobs WHERE id = ?", job_id)
        assert stopped_at <= kept < total
        server.restart()

        def finished() -> bool:
            (status,) = fetch_one(store, "SELECT status FROM iogate_jobs WHERE id = ?", job_id)
            return bool(status == "done")

        wait_for(finished, timeout=JOB_SECONDS, what="the job to finish after the restart")
    finally:
        server.close()
    (result,) = fetch_one(
        tmp_path / STORE,
        "SELECT result FROM iogate_job_results WHERE job_id = ? AND idx = ?",
        job_id,
        total,
    )
    assert orjson.loads(result)["error_type"] == "forbidden_statement"
    lite = tmp_path / "lite.db"
    assert fetch_one(lite, "SELECT count(*) FROM sqlite_master WHERE name = 'evil'") == (0,)
    assert fetch_one(lite, "SELECT count(DISTINCT v) FROM items") == (total,)
    replayed = duplicates(tmp_path)
    assert replayed_by_the_reload <= 1, f"{replayed_by_the_reload} applied twice by the reload"
    assert replayed - replayed_by_the_reload <= 1, f"{replayed} inserts applied twice"


def duplicates(workdir: Path) -> int:
    (count,) = fetch_one(workdir / "lite.db", "SELECT count(*) - count(DISTINCT v) FROM items")
    return int(count)
