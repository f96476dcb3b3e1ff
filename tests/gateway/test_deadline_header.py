"""A client's deadline (``Request-Timeout``, ``grpc-timeout``) against real
``iogate serve`` processes: it shortens the request on every route, is
capped by ``request_timeout``, is refused with a 400 when malformed, and is
forwarded to upstream APIs as what is left, so a chain of gateways shrinks it.

Two gateways: ``inner`` has PostgreSQL, a named operation and an API on a
local upstream that records the headers it receives and sleeps as asked;
``outer`` has one API, ``inner`` itself. The upstream is a threaded
``http.server`` so that these synchronous tests need no event loop.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from iogate.backends.http import AsyncAPIManager
from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError
from iogate.resilience.deadline_headers import ClientDeadline, format_timeout, parse_timeout
from tests.conftest import POSTGRES_URL, port_open, unavailable
from tests.security.support import GatewayProcess

REQUEST_TIMEOUT = 3.0  # [gateway] request_timeout of both gateways
SLACK = 0.5  # the bound: a deadline is kept within 0.5 s


class Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[dict[str, str]] = []
        self.release = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def last(self) -> dict[str, str]:
        assert self.seen, "the upstream received nothing"
        return self.seen[-1]


class _Handler(BaseHTTPRequestHandler):
    server: Upstream

    def do_GET(self) -> None:
        self.server.seen.append({k.lower(): v for k, v in self.headers.items()})
        query = parse_qs(urlsplit(self.path).query)
        seconds = min(float(query.get("s", ["0"])[0]), 10.0)
        self.server.release.wait(seconds)  # a sleep that teardown can cut short
        body = json.dumps({"slept": seconds}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the gateway gave up first: that is the point

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _gateway(workdir: Path, config: str) -> GatewayProcess:
    process = GatewayProcess(workdir, "")
    # Our own [gateway] table: no keys (loopback), a short request_timeout.
    process.config.write_text(
        f'[gateway]\nhost = "127.0.0.1"\nport = {process.port}\n'
        f"request_timeout = {REQUEST_TIMEOUT}\n{config}",
        encoding="utf-8",
    )
    return process


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def gateways(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    if not port_open(POSTGRES_URL, 5432):
        unavailable(f"no PostgreSQL at {POSTGRES_URL}")
    inner = _gateway(
        tmp_path_factory.mktemp("inner"),
        f"""
[databases.pg]
type = "postgresql"
url = "{POSTGRES_URL}"
max_connections = 4
statement_timeout = 30

[apis.up]
base_url = "http://127.0.0.1:{upstream.port}/v1"
timeout = 20
# These tests time out on purpose, many times: the breaker must stay out of it.
circuit_breaker = {{ failure_threshold = 1000, recovery_timeout = 0.1, failure_ratio = 1.0 }}

[operations.slow]
database = "pg"
query = "SELECT pg_sleep($1)"
params = ["seconds"]
""",
    )
    outer = _gateway(
        tmp_path_factory.mktemp("outer"),
        f"""
[apis.inner]
base_url = "http://127.0.0.1:{inner.port}"
timeout = 20
circuit_breaker = {{ failure_threshold = 1000, recovery_timeout = 0.1, failure_ratio = 1.0 }}
""",
    )
    try:
        inner.start()
        outer.start()
        yield inner, outer
    finally:
        outer.close()
        inner.close()


@pytest.fixture
def inner(gateways: tuple[GatewayProcess, GatewayProcess]) -> GatewayProcess:
    return gateways[0]


@pytest.fixture
def outer(gateways: tuple[GatewayProcess, GatewayProcess]) -> GatewayProcess:
    return gateways[1]


def post(
    gateway: GatewayProcess, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = gateway.gateway.client.post(path, json=body, headers=headers or {}, timeout=30)
    return response, time.monotonic() - started


def sleep_call(seconds: float) -> dict[str, Any]:
    return {"api_name": "up", "method": "GET", "endpoint": "/sleep", "params": {"s": seconds}}


# -- the deadline is kept on every route ----------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "seconds"),
    [
        ("Request-Timeout", "0.8", 0.8),
        ("Request-Timeout", "0.80", 0.8),
        ("grpc-timeout", "800m", 0.8),
        ("grpc-timeout", "800000u", 0.8),
        ("grpc-timeout", "1S", 1.0),
    ],
)
def test_api_route_keeps_the_client_deadline_and_forwards_what_is_left(
    inner: GatewayProcess, upstream: Upstream, header: str, value: str, seconds: float
) -> None:
    response, elapsed = post(inner, "/api/execute", sleep_call(5), {header: value})
    assert response.status_code == 504, response.text
    assert response.json()["error_type"] == "timeout"
    assert seconds - 0.05 <= elapsed <= seconds + SLACK
    received = upstream.last()
    # Forwarded in the form the client used, and only that one.
    other = "request-timeout" if header == "grpc-timeout" else "grpc-timeout"
    assert other not in received
    forwarded = _seconds(header, received[header.lower()])
    assert seconds - 0.3 < forwarded < seconds


def test_without_a_header_the_upstream_is_told_request_timeout(
    inner: GatewayProcess, upstream: Upstream
) -> None:
    response, _ = post(inner, "/api/execute", sleep_call(0))
    assert response.status_code == 200, response.text
    received = upstream.last()
    assert "grpc-timeout" not in received
    # The smaller of request_timeout (3) and the API's timeout (20).
    assert REQUEST_TIMEOUT - 0.5 < float(received["request-timeout"]) <= REQUEST_TIMEOUT


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Request-Timeout", "99999999999999999999"),
        ("Request-Timeout", "9" * 400),  # beyond a float: still just capped
        ("grpc-timeout", "99999999H"),
    ],
)
def test_absurdly_large_deadlines_are_capped_by_request_timeout(
    inner: GatewayProcess, upstream: Upstream, header: str, value: str
) -> None:
    response, elapsed = post(inner, "/api/execute", sleep_call(10), {header: value})
    assert response.status_code == 504, response.text
    assert REQUEST_TIMEOUT - 0.05 <= elapsed <= REQUEST_TIMEOUT + SLACK
    assert _seconds(header, upstream.last()[header.lower()]) <= REQUEST_TIMEOUT


def test_the_smaller_of_both_headers_wins_and_both_are_forwarded(
    inner: GatewayProcess, upstream: Upstream
) -> None:
    headers = {"Request-Timeout": "2.5", "grpc-timeout": "700m"}
    response, elapsed = post(inner, "/api/execute", sleep_call(5), headers)
    assert response.status_code == 504
    assert elapsed <= 0.7 + SLACK
    received = upstream.last()
    assert float(received["request-timeout"]) < 0.7
    assert _seconds("grpc-timeout", received["grpc-timeout"]) < 0.7


def test_a_deadline_header_given_in_the_call_itself_is_replaced(
    inner: GatewayProcess, upstream: Upstream
) -> None:
    call = {**sleep_call(0), "headers": {"Request-Timeout": "3600"}}
    response, _ = post(inner, "/api/execute", call, {"Request-Timeout": "2"})
    assert response.status_code == 200, response.text
    assert float(upstream.last()["request-timeout"]) <= 2.0


def test_database_route_keeps_the_client_deadline(inner: GatewayProcess) -> None:
    body = {"db_name": "pg", "query": "SELECT pg_sleep(5)"}
    response, elapsed = post(inner, "/database/execute", body, {"Request-Timeout": "0.8"})
    assert response.status_code == 504, response.text
    assert response.json()["error_type"] == "timeout"
    assert elapsed <= 0.8 + SLACK


def test_database_route_keeps_a_grpc_deadline(inner: GatewayProcess) -> None:
    body = {"db_name": "pg", "query": "SELECT pg_sleep(5)"}
    response, elapsed = post(inner, "/database/execute", body, {"grpc-timeout": "800m"})
    assert response.status_code == 504, response.text
    assert elapsed <= 0.8 + SLACK


def test_batch_route_keeps_the_client_deadline(inner: GatewayProcess, upstream: Upstream) -> None:
    operations = [
        {"type": "database", "db_name": "pg", "query": "SELECT pg_sleep(5)"},
        {"type": "api", **sleep_call(5)},
    ]
    response, elapsed = post(
        inner, "/batch/execute", {"operations": operations}, {"Request-Timeout": "0.8"}
    )
    assert response.status_code == 200, response.text
    assert [r["error_type"] for r in response.json()["results"]] == ["timeout", "timeout"]
    assert elapsed <= 0.8 + SLACK
    assert float(upstream.last()["request-timeout"]) < 0.8


def test_operations_route_keeps_the_client_deadline(inner: GatewayProcess) -> None:
    response, elapsed = post(inner, "/operations/slow", {"seconds": 5.0}, {"grpc-timeout": "800m"})
    assert response.status_code == 504, response.text
    assert elapsed <= 0.8 + SLACK


def test_a_generous_header_does_not_lengthen_request_timeout(inner: GatewayProcess) -> None:
    body = {"db_name": "pg", "query": "SELECT pg_sleep(10)"}
    response, elapsed = post(inner, "/database/execute", body, {"Request-Timeout": "60"})
    assert response.status_code == 504, response.text
    assert REQUEST_TIMEOUT - 0.05 <= elapsed <= REQUEST_TIMEOUT + SLACK


# -- a chain of gateways shrinks one deadline ----------------------------------------------


@pytest.mark.parametrize(("header", "value"), [("Request-Timeout", "2"), ("grpc-timeout", "2S")])
def test_a_chain_of_gateways_shrinks_the_deadline(
    outer: GatewayProcess, upstream: Upstream, header: str, value: str
) -> None:
    call = {
        "api_name": "inner",
        "method": "POST",
        "endpoint": "/api/execute",
        "data": sleep_call(10),
    }
    seen_before = len(upstream.seen)
    response, elapsed = post(outer, "/api/execute", call, {header: value})
    # The inner gateway gives up first (it has less time) and says 504; the
    # outer one passes that on as the upstream's failure, or times out itself.
    assert response.status_code in (502, 504), response.text
    assert elapsed <= 2.0 + SLACK
    assert len(upstream.seen) == seen_before + 1
    received = upstream.last()
    # Two hops, each forwarding what it had left, in the client's form.
    assert 1.0 < _seconds(header, received[header.lower()]) < 2.0
    other = "request-timeout" if header == "grpc-timeout" else "grpc-timeout"
    assert other not in received


# -- malformed values are refused ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Request-Timeout", "abc"),
        ("Request-Timeout", "-1"),
        ("Request-Timeout", "1e3"),
        ("Request-Timeout", "1.5.2"),
        ("Request-Timeout", "+2"),
        ("Request-Timeout", "nan"),
        ("Request-Timeout", "inf"),
        ("Request-Timeout", "1_000"),
        ("Request-Timeout", ""),
        ("grpc-timeout", "5"),
        ("grpc-timeout", "5x"),
        ("grpc-timeout", "-5m"),
        ("grpc-timeout", "1.5S"),
        ("grpc-timeout", "123456789m"),  # 9 digits: the spec allows 8
        ("grpc-timeout", "5 m"),
    ],
)
@pytest.mark.parametrize("route", ["/api/execute", "/database/execute"])
def test_malformed_deadline_headers_are_a_400_naming_the_header(
    inner: GatewayProcess, header: str, value: str, route: str
) -> None:
    body = sleep_call(0) if route == "/api/execute" else {"db_name": "pg", "query": "SELECT 1"}
    response, _ = post(inner, route, body, {header: value})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 400
    assert header in problem["detail"]


def test_a_deadline_header_given_twice_is_a_400(inner: GatewayProcess) -> None:
    response = inner.gateway.client.post(
        "/api/execute",
        json=sleep_call(0),
        headers=[("Request-Timeout", "1"), ("Request-Timeout", "2")],
    )
    assert response.status_code == 400
    assert "Request-Timeout" in response.json()["detail"]


def test_zero_is_a_deadline_that_has_passed(inner: GatewayProcess, upstream: Upstream) -> None:
    seen_before = len(upstream.seen)
    response, elapsed = post(inner, "/api/execute", sleep_call(0), {"grpc-timeout": "0m"})
    assert response.status_code == 504, response.text
    assert elapsed < SLACK
    assert len(upstream.seen) == seen_before  # nothing was sent


def _seconds(header: str, value: str) -> float:
    if header.lower() == "grpc-timeout":
        units = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
        assert len(value) <= 9, value
        return int(value[:-1]) * units[value[-1]]
    return float(value)


# -- the pieces, without a gateway ---------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "grpc", "request_timeout"),
    [
        (0.0, "0n", "0.000"),
        (0.0123456789, "12345678n", "0.012"),
        (0.5, "500000u", "0.500"),
        (2.4567891, "2456789u", "2.456"),
        (99.9999999, "99999999u", "99.999"),
        (100.0, "100000m", "100.000"),
        (30 * 3600.0, "108000S", "108000.000"),
        (-1.0, "0n", "0.000"),
    ],
)
def test_format_timeout_rounds_down_in_the_finest_unit_that_fits(
    seconds: float, grpc: str, request_timeout: str
) -> None:
    assert format_timeout("grpc-timeout", seconds) == grpc
    assert format_timeout("Request-Timeout", seconds) == request_timeout
    assert len(grpc) <= 9  # at most 8 digits and the unit
    assert parse_timeout("grpc-timeout", grpc) <= max(seconds, 0.0)
    assert parse_timeout("Request-Timeout", request_timeout) <= max(seconds, 0.0)


@pytest.mark.parametrize(
    ("name", "value", "seconds"),
    [
        ("grpc-timeout", "1H", 3600.0),
        ("grpc-timeout", "2M", 120.0),
        ("grpc-timeout", "3S", 3.0),
        ("grpc-timeout", "250m", 0.25),
        ("grpc-timeout", "250u", 0.00025),
        ("grpc-timeout", "250n", 0.00000025),
        ("grpc-timeout", "99999999H", 99999999 * 3600.0),
        ("Request-Timeout", "2.5", 2.5),
        ("Request-Timeout", " 7 ", 7.0),
        ("Request-Timeout", "0", 0.0),
    ],
)
def test_parse_timeout_reads_both_forms(name: str, value: str, seconds: float) -> None:
    assert parse_timeout(name, value) == pytest.approx(seconds)


async def test_the_manager_forwards_a_callers_deadline_in_its_form(upstream: Upstream) -> None:
    async with AsyncAPIManager(f"http://127.0.0.1:{upstream.port}/v1", name="up") as api:
        assert (await api.get("/sleep")).success
        assert "request-timeout" not in upstream.last()  # no caller's deadline: nothing to tell
        assert (await api.request("GET", "/sleep", deadline=Deadline(5))).success
        assert 4.0 < float(upstream.last()["request-timeout"]) <= 5.0
        grpc = ClientDeadline(5, headers=("grpc-timeout",))
        assert (await api.request("GET", "/sleep", deadline=grpc)).success
        assert "request-timeout" not in upstream.last()
        assert 4.0 < _seconds("grpc-timeout", upstream.last()["grpc-timeout"]) <= 5.0
        # The manager's own timeout is shorter: that is what the upstream has.
        short = AsyncAPIManager(f"http://127.0.0.1:{upstream.port}/v1", name="up", timeout=2)
        async with short:
            assert (await short.request("GET", "/sleep", deadline=Deadline(5))).success
        assert float(upstream.last()["request-timeout"]) <= 2.0
    quiet = AsyncAPIManager(f"http://127.0.0.1:{upstream.port}/v1", deadline_header=None)
    async with quiet:
        assert (await quiet.request("GET", "/sleep", deadline=Deadline(5))).success
    assert "request-timeout" not in upstream.last()


def test_an_unknown_deadline_header_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="deadline_header"):
        AsyncAPIManager("http://127.0.0.1:1/v1", deadline_header="X-Timeout")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Request-Timeout", "\u0661\u0662"),  # Arabic-Indic digits: not ASCII, not ours
        ("grpc-timeout", "\u0665m"),
        ("Request-Timeout", "0x10"),
        ("grpc-timeout", "100"),
        ("grpc-timeout", "m"),
    ],
)
def test_parse_timeout_refuses_anything_but_the_ascii_forms(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        parse_timeout(name, value)
