"""Limits on what a client controls: each one answered with a 4xx naming its setting.

In process (TestClient) for the answers on every route, then against a real
``iogate serve`` for what only a process shows: the 50-byte
``{"10000000": 1}`` body answers at once, with a small body, and leaves the
process's memory (VmRSS) where it was.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from iogate.gateway.app import create_app
from iogate.gateway.middleware import json_limit_exceeded
from iogate.gateway.settings import parse_settings
from iogate.orchestrator.batch import BatchRefusedError, plan_batch
from tests.security.support import ADMIN, GatewayProcess

KEY = "limits-key-5d1c0b7e"
MAX_BODY = 65_536
MAX_PARAMS = 100
MAX_DEPTH = 16
MAX_STRING = 1024
MAX_BATCH = 40


class Upstream(BaseHTTPRequestHandler):
    """An API that answers every call with a small JSON body."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        raw = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, upstream_url: str) -> Iterator[TestClient]:
    directory: Path = tmp_path_factory.mktemp("limits")
    config = f"""
[gateway]
max_body_bytes = {MAX_BODY}
max_params = {MAX_PARAMS}
max_json_depth = {MAX_DEPTH}
max_string_bytes = {MAX_STRING}
max_batch_operations = {MAX_BATCH}

[[gateway.api_keys]]
name = "all"
key = "{KEY}"
scopes = ["db:*:admin", "api:*", "batch", "ops:*", "observe"]

[databases.main]
type = "sqlite"
path = "{directory / "limits.db"}"

[databases.cache]
type = "memory"

[apis.upstream]
base_url = "{upstream_url}"
timeout = 2
retry = {{ attempts = 1 }}

[operations.echo]
database = "main"
query = "SELECT ? AS v"
params = ["v"]
"""
    app = create_app(parse_settings(config, env={}))
    headers = {"Authorization": f"Bearer {KEY}"}
    with TestClient(app, base_url="http://127.0.0.1", headers=headers) as test_client:
        yield test_client


def nested(depth: int) -> Any:
    """``depth`` levels of arrays and objects around a number."""
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# One body per route, with the client's value where a client puts data.
ROUTES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "database": (
        "/database/execute",
        lambda value: {"db_name": "main", "query": "SELECT ?", "params": [value]},
    ),
    "api": (
        "/api/execute",
        lambda value: {"api_name": "upstream", "method": "POST", "endpoint": "/e", "data": value},
    ),
    "batch": (
        "/batch/execute",
        lambda value: {
            "operations": [
                {"type": "database", "db_name": "main", "query": "SELECT ?", "params": [value]}
            ]
        },
    ),
    "operation": ("/operations/echo", lambda value: {"v": value}),
}


def assert_problem(response: httpx.Response, status: int, limit: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["limit"] == limit
    assert limit in body["detail"]


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_nesting_beyond_max_json_depth_is_422_on_every_route(
    client: TestClient, route: str
) -> None:
    path, body = ROUTES[route]
    assert_problem(client.post(path, json=body(nested(MAX_DEPTH))), 422, "max_json_depth")
    # Far beyond what a JSON parser's recursion could take: the same answer.
    raw = json.dumps(body(0)).replace("0", "[" * 30_000 + "]" * 30_000, 1)
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert_problem(response, 422, "max_json_depth")
    # Within the limit, the same route gets past the check.
    assert client.post(path, json=body(nested(4))).status_code < 500


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_string_beyond_max_string_bytes_is_422_on_every_route(
    client: TestClient, route: str
) -> None:
    path, body = ROUTES[route]
    assert_problem(client.post(path, json=body("x" * (MAX_STRING + 1))), 422, "max_string_bytes")
    # Decoded size counts: 600 two-byte characters are 1200 bytes, written as
    # \u escapes or not.
    wide = body("é" * 600)
    assert_problem(client.post(path, json=wide), 422, "max_string_bytes")
    escaped = json.dumps(wide, ensure_ascii=True)
    response = client.post(path, content=escaped, headers={"content-type": "application/json"})
    assert_problem(response, 422, "max_string_bytes")
    # An object key is a string too.
    assert_problem(client.post(path, json=body({"k" * 2000: 1})), 422, "max_string_bytes")
    assert client.post(path, json=body("x" * MAX_STRING)).status_code < 500


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_body_beyond_max_body_bytes_is_413(client: TestClient, route: str) -> None:
    path, body = ROUTES[route]
    raw = json.dumps(body(["x" * 1000] * 70))
    assert len(raw) > MAX_BODY
    response = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert_problem(response, 413, "max_body_bytes")


def test_a_batch_beyond_max_batch_operations_is_422(client: TestClient) -> None:
    step = {"type": "database", "db_name": "cache", "query": "k", "params": {"operation": "get"}}
    response = client.post("/batch/execute", json={"operations": [step] * (MAX_BATCH + 1)})
    assert_problem(response, 422, "max_batch_operations")


# -- parameters ---------------------------------------------------------------------


def assert_invalid_result(response: httpx.Response, *words: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    result: dict[str, Any] = response.json()
    assert result["success"] is False
    assert result["error_type"] == "invalid_request"
    for word in words:
        assert word in result["error"], result["error"]
    return result


@pytest.mark.parametrize(
    "params",
    [
        {str(MAX_PARAMS + 1): 1},
        {"10000000": 1},
        {"$10000000": 1},
        {"9" * 1000: 1},  # 1000 digits: within max_string_bytes, far beyond max_params
        list(range(MAX_PARAMS + 1)),
        {str(i): i for i in range(1, MAX_PARAMS + 2)},
    ],
)
def test_parameters_beyond_max_params_are_refused(client: TestClient, params: Any) -> None:
    body = {"db_name": "main", "query": "SELECT ?", "params": params}
    result = assert_invalid_result(client.post("/database/execute", json=body), "max_params")
    assert len(result["error"]) < 300


def test_parameters_up_to_max_params_run(client: TestClient) -> None:
    query = "SELECT " + " + ".join("?" for _ in range(MAX_PARAMS)) + " AS total"
    params = {str(i): 1 for i in range(1, MAX_PARAMS + 1)}
    body = {"db_name": "main", "query": query, "params": params}
    response = client.post("/database/execute", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"total": MAX_PARAMS}]


@pytest.mark.parametrize("key", ["²", "①", "٣", "-1", " 1", "1.0", "0", "1e0", "$$1"])
def test_parameter_keys_that_are_not_positions_are_refused(client: TestClient, key: str) -> None:
    body = {"db_name": "main", "query": "SELECT ?", "params": {key: 1}}
    assert_invalid_result(client.post("/database/execute", json=body))


def test_a_huge_position_is_answered_at_once_in_process(client: TestClient) -> None:
    started = time.perf_counter()
    response = client.post(
        "/database/execute",
        json={"db_name": "main", "query": "SELECT ?", "params": {"10000000": 1}},
    )
    assert time.perf_counter() - started < 0.5
    assert_invalid_result(response, "max_params")
    assert len(response.content) < 1024


def batch_results(client: TestClient, operations: list[Any]) -> list[dict[str, Any]]:
    response = client.post("/batch/execute", json={"operations": operations})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_batch_steps_beyond_max_params_are_invalid_alone(client: TestClient) -> None:
    ok = {"type": "database", "db_name": "main", "query": "SELECT 1 AS one"}
    too_many = {**ok, "query": "SELECT ?", "params": {"10000000": 1}}
    in_transaction = {
        "type": "transaction",
        "db_name": "main",
        "queries": [{"query": "SELECT ?", "params": list(range(MAX_PARAMS + 1))}],
    }
    results = batch_results(client, [ok, too_many, in_transaction])
    assert results[0]["success"] is True
    for result in results[1:]:
        assert result["error_type"] == "invalid_request"
        assert "max_params" in result["error"]


# -- batch steps of the wrong shape ----------------------------------------------------

MALFORMED_STEPS = [
    {"type": []},
    {"type": {}},
    {"type": 1},
    {"type": True},
    {"type": "nope" * 200},
    {"type": "database", "db_name": "main", "query": 5},
    {"type": "database", "db_name": "main", "query": ["SELECT 1"]},
    {"type": "database", "db_name": "main", "query": {"a": 1, "b": 2}},
    {"type": "database", "db_name": ["main"], "query": "SELECT 1"},
    {"type": "database", "db_name": "main", "query": "SELECT ?", "params": "1"},
    {"type": "database", "db_name": "main", "query": "SELECT ?", "params": 1},
    {"type": "database", "db_name": "main", "query": "SELECT ?", "params": {"²": 1}},
    {"type": "database", "db_name": "cache", "query": "k", "params": [1]},
    {"type": "transaction", "db_name": "main", "queries": "SELECT 1"},
    {"type": "transaction", "db_name": "main", "queries": [{"query": 5}]},
    {"type": "transaction", "db_name": "main", "queries": [{"query": "SELECT ?", "params": 2}]},
    {"type": "api", "api_name": "upstream", "method": 1, "endpoint": "/e"},
    {"type": "api", "api_name": "upstream", "method": "GET", "endpoint": "/e", "params": [1]},
    {"type": "api", "api_name": "upstream", "method": "GET", "endpoint": "/e", "headers": "x"},
    {"type": "operation", "name": "echo", "params": [1]},
    {"type": "operation", "name": {"$ref": "0"}},
    [],
    "step",
    None,
]


@pytest.mark.parametrize("step", MALFORMED_STEPS, ids=lambda step: json.dumps(step)[:40])
def test_a_malformed_step_is_its_own_invalid_request(client: TestClient, step: Any) -> None:
    ok = {"type": "database", "db_name": "main", "query": "SELECT 1 AS one"}
    results = batch_results(client, [ok, step])
    assert results[0]["success"] is True
    assert results[1]["success"] is False
    assert results[1]["error_type"] == "invalid_request", results[1]
    assert len(results[1]["error"]) < 400


@pytest.mark.parametrize(
    "operations",
    [
        [{"type": "database", "db_name": "main", "query": 5}],
        [{"type": []}],
        [{"type": "transaction", "db_name": "main", "queries": [{"query": 5}]}],
    ],
)
def test_an_atomic_batch_with_a_malformed_step_is_refused(
    client: TestClient, operations: list[Any]
) -> None:
    response = client.post("/batch/execute", json={"operations": operations, "atomic": True})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "reference",
    [
        {"$ref": 5},
        {"$ref": ["0"]},
        {"$ref": "².data"},
        {"$ref": "9" * 5000 + ".data"},
        {"$fmt": 5},
        {"$fmt": "{0.data.²}"},
        {"$fmt": "{"},
    ],
)
def test_references_of_the_wrong_shape_never_crash(
    client: TestClient, reference: dict[str, Any]
) -> None:
    first = {"type": "database", "db_name": "main", "query": "SELECT 1 AS one"}
    second = {"type": "database", "db_name": "main", "query": "SELECT ?", "params": [reference]}
    for atomic in (False, True):
        response = client.post(
            "/batch/execute", json={"operations": [first, second], "atomic": atomic}
        )
        assert response.status_code in (200, 422), response.text
        if response.status_code == 200:
            second_result = response.json()["results"][1]
            assert second_result["error_type"] in ("invalid_request", "rolled_back")


@pytest.mark.parametrize("step_id", [5, [], {}, "²", "a b", "user\n", "12"])
def test_step_ids_of_the_wrong_shape_refuse_the_batch(client: TestClient, step_id: Any) -> None:
    step = {"id": step_id, "type": "database", "db_name": "main", "query": "SELECT 1"}
    response = client.post("/batch/execute", json={"operations": [step]})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"


# -- metric labels ----------------------------------------------------------------------


def test_an_api_method_outside_the_closed_set_never_becomes_a_metric_label(
    client: TestClient,
) -> None:
    bogus = [f"BOGUS{i}" for i in range(MAX_BATCH - 2)]
    steps: list[Any] = [
        {"type": "api", "api_name": "upstream", "method": method, "endpoint": "/e"}
        for method in bogus
    ]
    for method in ("get", "OPTIONS"):
        steps.append({"type": "api", "api_name": "upstream", "method": method, "endpoint": "/e"})
    results = batch_results(client, steps)
    for result in results[:-2]:
        assert result["error_type"] == "invalid_request"
        assert "method" in result["error"]
    assert all(result["success"] for result in results[-2:]), results[-2:]
    for method in ("BOGUS", "get ", "OPTIONSX", "G\u0130T"):
        body = {"api_name": "upstream", "method": method, "endpoint": "/e"}
        assert client.post("/api/execute", json=body).status_code == 422
    metrics = client.get("/metrics").text
    assert "BOGUS" not in metrics
    assert 'operation="GET"' in metrics
    assert 'operation="OPTIONS"' in metrics


# -- the raw check, as a function --------------------------------------------------------


def reference_depth(value: Any) -> int:
    """Nesting of a parsed JSON value, the slow and obvious way."""
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\u00e9\n', max_size=6),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=3), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(JSON, st.integers(min_value=0, max_value=8), st.booleans())
def test_the_raw_depth_check_agrees_with_the_parsed_value(
    value: Any, limit: int, ascii_only: bool
) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    exceeded = json_limit_exceeded(body, max_depth=limit, max_string_bytes=10**6)
    assert (exceeded == "max_json_depth") == (reference_depth(value) > limit)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.text(max_size=12), max_size=4), st.integers(min_value=0, max_value=30))
def test_the_raw_string_check_measures_decoded_utf8(texts: list[str], limit: int) -> None:
    body = json.dumps(texts).encode()
    exceeded = json_limit_exceeded(body, max_depth=10, max_string_bytes=limit)
    longest = max((len(t.encode("utf-8", "surrogatepass")) for t in texts), default=0)
    assert (exceeded == "max_string_bytes") == (longest > limit)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(JSON, max_size=4))
def test_planning_any_json_refuses_or_plans_never_crashes(operations: list[Any]) -> None:
    try:
        steps = plan_batch(operations, max_params=10)
    except BatchRefusedError:
        return
    assert len(steps) == len(operations)


# -- a real process -----------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_huge_position_costs_a_real_gateway_nothing(tmp_path: Path) -> None:
    config = f"""
[[gateway.api_keys]]
name = "admin"
key = "${{ADMIN_KEY}}"
scopes = ["db:*:admin"]

[databases.main]
type = "sqlite"
path = "{tmp_path / "rss.db"}"
"""
    server = GatewayProcess(tmp_path, config)
    gateway = server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        headers = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
        warm = b'{"db_name":"main","query":"SELECT ?","params":{"1":1}}'
        assert gateway.client.post("/database/execute", content=warm, headers=headers).is_success
        before = rss_kib(pid)
        body = b'{"db_name":"main","query":"SELECT ?","params":{"10000000":1}}'
        assert len(body) < 70
        slowest = 0.0
        for _ in range(20):
            started = time.perf_counter()
            response = gateway.client.post("/database/execute", content=body, headers=headers)
            slowest = max(slowest, time.perf_counter() - started)
            assert response.status_code == 422, response.text
            assert "max_params" in response.json()["error"]
            assert len(response.content) < 1024
        growth = rss_kib(pid) - before
        assert slowest < 0.5, slowest
        assert growth < 5 * 1024, f"RSS grew by {growth} KiB"
    finally:
        server.close()


DEEP_JSONB = "SELECT (repeat('[', 300) || '1' || repeat(']', 300))::jsonb AS deep"


def test_database_output_too_deep_for_json_is_a_400_not_a_500(postgres_url: str) -> None:
    """The database can build JSON deeper than the encoder takes; the client
    gets a failed Result naming why, directly and inside a batch."""
    from fastapi.testclient import TestClient

    from iogate.gateway.app import create_app
    from iogate.gateway.settings import parse_settings

    settings = parse_settings(f'[databases.pg]\ntype = "postgresql"\nurl = "{postgres_url}"\n')
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        direct = client.post("/database/execute", json={"db_name": "pg", "query": DEEP_JSONB})
        assert direct.status_code == 400, direct.text
        assert "cannot be sent as JSON" in direct.json()["error"]
        ops = [
            {"type": "database", "db_name": "pg", "query": DEEP_JSONB},
            {"type": "database", "db_name": "pg", "query": "SELECT 1 AS one"},
        ]
        batch = client.post("/batch/execute", json={"operations": ops})
        assert batch.status_code == 200, batch.text
        first, second = batch.json()["results"]
        assert first["error_type"] == "query_error"
        assert second["data"] == [{"one": 1}]
