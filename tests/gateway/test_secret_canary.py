"""Canary secrets never leave the gateway: a real ``iogate serve`` process.

Unique canary values are planted wherever iogate holds a secret -- DSN
passwords (a PostgreSQL that answers, one that does not, Redis, MySQL), API
credential headers, the gateway's own API keys -- and the gateway is driven
through every error path we can provoke: unreachable databases, SQL errors,
statement timeouts, bad parameters, an upstream that fails, hangs, drops the
connection, redirects off-origin or echoes our credentials back, a circuit
breaker that opens, refused and malformed requests, batches with failures,
and every observability endpoint. No canary, nor its percent-encoded or
base64 forms, may appear in any response (status line aside: body and
headers) or in any line the process writes.

Wrong keys a client sends are canaries too: a near miss of a real key (a
typo) must not be logged either.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import httpx
import pytest
from aiohttp import web

from iogate.gateway.logging import Redactor, secrets_of
from iogate.gateway.settings import parse_settings
from tests.conftest import free_port, poll

IOGATE = [sys.executable, "-m", "iogate.cli"]


def canary(label: str) -> str:
    # "/" and "+" make the percent-encoded and base64 forms differ from the value.
    return f"CANARY_{label}_{uuid.uuid4().hex[:16]}/+z"


PG_PASSWORD = canary("PG")
PG_DOWN_PASSWORD = canary("PGDOWN")
REDIS_PASSWORD = canary("REDIS")
REDIS_DOWN_PASSWORD = canary("REDISDOWN")
MYSQL_PASSWORD = canary("MYSQL")
HEADER_TOKEN = canary("HDR").replace("/", "-")  # a header value: token68 characters
API_KEY_HEADER = canary("APIKEY").replace("/", "-")
ADMIN_KEY = canary("KEY").replace("/", "-")
LOW_KEY = canary("LOWKEY").replace("/", "-")
WRONG_KEY = canary("WRONGKEY").replace("/", "-")
CANARIES = {
    "pg password": PG_PASSWORD,
    "unreachable pg password": PG_DOWN_PASSWORD,
    "redis password": REDIS_PASSWORD,
    "unreachable redis password": REDIS_DOWN_PASSWORD,
    "mysql password": MYSQL_PASSWORD,
    "api bearer token": HEADER_TOKEN,
    "api key header": API_KEY_HEADER,
    "gateway admin key": ADMIN_KEY,
    "gateway low-scope key": LOW_KEY,
    "wrong key sent by a client": WRONG_KEY,
}


def base64_cores(value: bytes) -> set[str]:
    """What any base64 text containing ``value`` contains, at each of the
    three byte alignments (standard and URL-safe alphabets)."""
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + value).decode()
        first = -(-offset * 8 // 6)  # first character made only of value's bits
        last = (offset + len(value)) * 8 // 6
        core = encoded[first:last]
        cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def forms(secret: str) -> set[str]:
    """The secret as it may leak: raw, percent-encoded, base64 (alone and as the
    password of a Basic credential), hex, and its unique part alone."""
    unique = secret.split("_")[2][:16]
    found = {secret, quote(secret, safe=""), quote_plus(secret), unique, secret.encode().hex()}
    found |= base64_cores(secret.encode())
    return found


FORMS = {label: forms(secret) for label, secret in CANARIES.items()}


def leaks(text: str) -> list[str]:
    return sorted(
        f"{label} ({form!r})" for label, found in FORMS.items() for form in found if form in text
    )


# -- a local upstream that misbehaves on request -----------------------------------


@dataclass
class Upstream:
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def build_upstream(upstream: Upstream) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        upstream.hits["ok"] += 1
        return web.json_response({"ok": True})

    async def fail(request: web.Request) -> web.Response:
        upstream.hits["fail"] += 1
        return web.json_response({"error": "boom"}, status=500)

    async def slow(request: web.Request) -> web.Response:
        upstream.hits["slow"] += 1
        # Hang until the test ends (the gateway's timeout is far shorter).
        try:
            await asyncio.wait_for(upstream.release.wait(), 30)
        except TimeoutError:
            pass
        return web.json_response({"late": True})

    async def drop(request: web.Request) -> web.Response:
        upstream.hits["drop"] += 1
        assert request.transport is not None
        request.transport.abort()
        return web.Response()  # never sent: the connection is gone

    async def echo(request: web.Request) -> web.Response:
        """A debugging endpoint that repeats our credentials, in the body and headers."""
        upstream.hits["echo"] += 1
        received = dict(request.headers)
        return web.json_response(
            {"received": received, "status": "fine"},
            status=int(request.query.get("status", "200")),
            headers={
                "X-Echo-Authorization": received.get("Authorization", ""),
                "X-Echo-Key": received.get("X-Api-Key", ""),
            },
        )

    async def redirect(request: web.Request) -> web.Response:
        upstream.hits["redirect"] += 1
        raise web.HTTPFound(f"http://127.0.0.2:{upstream.port}/v1/echo")

    app = web.Application()
    app.router.add_route("*", "/v1/ok", ok)
    app.router.add_route("*", "/v1/fail", fail)
    app.router.add_route("*", "/v1/slow", slow)
    app.router.add_route("*", "/v1/drop", drop)
    app.router.add_route("*", "/v1/echo", echo)
    app.router.add_route("*", "/v1/redirect", redirect)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    runner = web.AppRunner(build_upstream(state), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


# -- the gateway process -----------------------------------------------------------


def pg_url(password: str, port: int) -> str:
    return f"postgresql://postgres:{quote(password, safe='')}@127.0.0.1:{port}/test"


def write_config(path: Path, upstream: Upstream, tmp_path: Path, postgres_url: str) -> None:
    closed = free_port()  # nothing listens there
    pg_port = urlsplit(postgres_url).port or 5432
    path.write_text(
        f"""
[gateway]
max_body_bytes = 8192
max_batch_operations = 10
request_timeout = 10

[[gateway.api_keys]]
name = "admin"
key = "${{ADMIN_KEY}}"
scopes = ["db:*:write", "api:*", "batch", "ops:*"]

[[gateway.api_keys]]
name = "low"
key = "{LOW_KEY}"
scopes = ["db:lite:read"]

[databases.pg]
type = "postgresql"
url = "{pg_url(PG_PASSWORD, pg_port)}"
statement_timeout = 1
acquire_timeout = 2

[databases.pg_down]
type = "postgresql"
url = "{pg_url(PG_DOWN_PASSWORD, closed)}"
acquire_timeout = 1

[databases.cache]
type = "redis"
url = "redis://:{quote(REDIS_PASSWORD, safe="")}@127.0.0.1:6379/15"

[databases.cache_down]
type = "redis"
url = "redis://default:{quote(REDIS_DOWN_PASSWORD, safe="")}@127.0.0.1:{closed}/15"

[databases.my]
type = "mysql"
url = "mysql://root:{quote(MYSQL_PASSWORD, safe="")}@127.0.0.1:3306/test"
acquire_timeout = 2

[databases.lite]
type = "sqlite"
path = "{tmp_path / "canary.db"}"

[apis.up]
base_url = "{upstream.base_url}"
timeout = 1
headers = {{ Authorization = "Bearer {HEADER_TOKEN}", X-Api-Key = "{API_KEY_HEADER}" }}
retry = {{ attempts = 2, backoff_initial = 0.01, backoff_max = 0.02 }}

[apis.down]
base_url = "http://127.0.0.1:{closed}/v1"
timeout = 1
headers = {{ Authorization = "Bearer {HEADER_TOKEN}" }}
retry = {{ attempts = 1 }}
circuit_breaker = {{ failure_threshold = 2, recovery_timeout = 60 }}

[operations.pg_double]
database = "pg"
query = "SELECT $1::int * 2 AS n"
params = ["n"]

[operations.cached_lite]
database = "lite"
query = "SELECT ? AS v"
params = ["v"]
cache = {{ database = "cache", ttl = 5 }}

[operations.upstream_fail]
api = "up"
method = "GET"
endpoint = "/fail"
"""
    )


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    output: Path
    config: Path


@pytest.fixture
async def gateway(tmp_path: Path, upstream: Upstream, postgres_url: str) -> AsyncIterator[Gateway]:
    config = tmp_path / "iogate.toml"
    write_config(config, upstream, tmp_path, postgres_url)
    port = free_port()
    output = tmp_path / "gateway.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(  # noqa: ASYNC220 -- started once, waited for in a thread
            [
                *IOGATE,
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                "--log-level",
                "debug",
            ],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ADMIN_KEY": ADMIN_KEY},
        )
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        if process.poll() is not None:
            return True  # exited: stop waiting, the assertion below says so
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{url}/health", timeout=1)).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert await poll(healthy, timeout=60, interval=0.1)
        assert process.poll() is None, output.read_text()
        yield Gateway(url, process, output, config)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # a graceful shutdown logs its own lines
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10)


# -- the sweep ---------------------------------------------------------------------


@dataclass
class Exchange:
    label: str
    status: int
    text: str
    body: Any
    request_id: str | None


class Driver:
    """Sends requests and keeps every response for the final sweep."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.exchanges: list[Exchange] = []

    async def send(
        self, label: str, method: str, path: str, *, key: str | None = ADMIN_KEY, **kwargs: Any
    ) -> Exchange:
        headers = dict(kwargs.pop("headers", {}) or {})
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        response = await self.client.request(method, path, headers=headers, **kwargs)
        raw_headers = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
        try:
            body = response.json()
        except ValueError:
            body = None
        exchange = Exchange(
            label,
            response.status_code,
            raw_headers + "\n\n" + response.text,
            body,
            response.headers.get("x-request-id"),
        )
        self.exchanges.append(exchange)
        return exchange

    async def db(
        self, label: str, db_name: str, query: str, params: Any = None, **kw: Any
    ) -> Exchange:
        return await self.send(
            label,
            "POST",
            "/database/execute",
            json={"db_name": db_name, "query": query, "params": params},
            **kw,
        )

    async def api(self, label: str, api_name: str, endpoint: str, **kw: Any) -> Exchange:
        body = {"api_name": api_name, "method": kw.pop("method", "GET"), "endpoint": endpoint}
        return await self.send(label, "POST", "/api/execute", json=body, **kw)

    def error_types(self) -> set[str]:
        found = set()
        for exchange in self.exchanges:
            if isinstance(exchange.body, dict):
                found.add(exchange.body.get("error_type"))
                for result in exchange.body.get("results") or []:
                    found.add(result.get("error_type"))
        return found - {None}


async def exercise(driver: Driver) -> None:
    kv_get = {"operation": "get", "key": "canary:k"}
    # databases
    await driver.db("pg ok", "pg", "SELECT 1 AS one")
    await driver.db("pg syntax error", "pg", "SELEC 1")
    await driver.db("pg missing table", "pg", "SELECT * FROM no_such_table_canary")
    await driver.db("pg statement timeout", "pg", "SELECT pg_sleep(3)")
    await driver.db("pg bad params", "pg", "SELECT $1::int", {"2": 1})
    await driver.db("pg wrong param type", "pg", "SELECT $1::int", ["not a number"])
    for attempt in range(3):
        await driver.db(f"pg unreachable {attempt}", "pg_down", "SELECT 1")
    await driver.db("redis wrong password", "cache", "canary:k", kv_get)
    await driver.db("redis unreachable", "cache_down", "canary:k", kv_get)
    await driver.db("mysql wrong password", "my", "SELECT 1")
    await driver.db("sqlite ok", "lite", "SELECT 1 AS one")
    await driver.db("unknown db", "nope", "SELECT 1")
    # the upstream API
    await driver.api("api ok", "up", "/ok")
    await driver.api("api 500", "up", "/fail")
    await driver.api("api timeout", "up", "/slow")
    await driver.api("api connection dropped", "up", "/drop")
    await driver.api("api echoes credentials", "up", "/echo")
    await driver.api("api echoes credentials in an error", "up", "/echo?status=503")
    await driver.api("api off-origin redirect", "up", "/redirect")
    for endpoint in ("http://127.0.0.2/x", "//127.0.0.2/x", "/a/../../x", "@127.0.0.2/x"):
        await driver.api(f"api ssrf {endpoint}", "up", endpoint)
    for attempt in range(4):
        await driver.api(f"api connection refused {attempt}", "down", "/x")
    await driver.api("unknown api", "nope", "/x")
    # named operations
    await driver.send("op ok", "POST", "/operations/pg_double", json={"n": 21})
    await driver.send("op bad param", "POST", "/operations/pg_double", json={"n": "x"})
    await driver.send("op missing param", "POST", "/operations/pg_double", json={})
    await driver.send("op cache down", "POST", "/operations/cached_lite", json={"v": 1})
    await driver.send("op upstream fail", "POST", "/operations/upstream_fail", json={})
    await driver.send("op unknown", "POST", "/operations/nope", json={})
    # batches
    await driver.send(
        "batch with failures",
        "POST",
        "/batch/execute",
        json={
            "operations": [
                {"type": "database", "db_name": "pg", "query": "SELECT 1"},
                {"type": "database", "db_name": "pg_down", "query": "SELECT 1"},
                {"type": "database", "db_name": "pg", "query": "SELEC"},
                {"type": "database", "db_name": "cache", "query": "k", "params": kv_get},
                {"type": "api", "api_name": "up", "method": "GET", "endpoint": "/fail"},
                {"type": "api", "api_name": "down", "method": "GET", "endpoint": "/x"},
                {"type": "operation", "name": "pg_double", "params": {"n": 2}},
                {"type": "nonsense"},
            ]
        },
    )
    await driver.send(
        "batch refused",
        "POST",
        "/batch/execute",
        json={
            "atomic": True,
            "operations": [
                {"type": "database", "db_name": "pg", "query": "SELECT 1"},
                {"type": "api", "api_name": "up", "method": "GET", "endpoint": "/ok"},
            ],
        },
    )
    too_many = [{"type": "database", "db_name": "lite", "query": "SELECT 1"}] * 11
    await driver.send("batch too large", "POST", "/batch/execute", json={"operations": too_many})
    # authentication and request validation
    sql = {"db_name": "pg", "query": "SELECT 1"}
    await driver.send("no key", "POST", "/database/execute", key=None, json=sql)
    await driver.send("wrong key", "POST", "/database/execute", key=WRONG_KEY, json=sql)
    await driver.send("near-miss key", "POST", "/database/execute", key=ADMIN_KEY + "x", json=sql)
    await driver.send("key truncated", "POST", "/database/execute", key=ADMIN_KEY[:-1], json=sql)
    basic = base64.b64encode(f"admin:{ADMIN_KEY}".encode()).decode()
    await driver.send(
        "basic auth",
        "POST",
        "/database/execute",
        key=None,
        json=sql,
        headers={"Authorization": f"Basic {basic}"},
    )
    await driver.send("key in query string", "GET", f"/stats?api_key={ADMIN_KEY}", key=None)
    await driver.send("low scope db", "POST", "/database/execute", key=LOW_KEY, json=sql)
    await driver.send(
        "low scope write",
        "POST",
        "/database/execute",
        key=LOW_KEY,
        json={"db_name": "lite", "query": "CREATE TABLE t (x int)"},
    )
    await driver.api("low scope api", "up", "/ok", key=LOW_KEY)
    await driver.send("low scope op", "POST", "/operations/pg_double", key=LOW_KEY, json={"n": 1})
    await driver.send(
        "low scope batch", "POST", "/batch/execute", key=LOW_KEY, json={"operations": []}
    )
    await driver.send("low scope stats", "GET", "/stats", key=LOW_KEY)
    await driver.send("unknown route", "GET", "/no/such/route")
    await driver.send("wrong method", "GET", "/database/execute")
    await driver.send(
        "body too large",
        "POST",
        "/database/execute",
        content=b"x" * 9000,
        headers={"content-type": "application/json"},
    )

    async def chunks() -> AsyncIterator[bytes]:
        # Small enough that the whole body is sent before the 413 arrives.
        for _ in range(2):
            yield b" " * 5000

    await driver.send(
        "chunked body too large",
        "POST",
        "/database/execute",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    await driver.send(
        "invalid json",
        "POST",
        "/database/execute",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    await driver.send("invalid body", "POST", "/database/execute", json={"db_name": 3})
    await driver.send(
        "extra field",
        "POST",
        "/api/execute",
        json={"api_name": "up", "endpoint": "/ok", "password": PG_PASSWORD[:4]},
    )
    # observability, after the failures so that last errors show up
    for path in (
        "/health",
        "/ready",
        "/stats",
        "/metrics",
        "/operations",
        "/docs",
        "/openapi.json",
        "/dashboard",
    ):
        await driver.send(f"GET {path}", "GET", path)
    await driver.send(
        "metrics as openmetrics",
        "GET",
        "/metrics",
        headers={"Accept": "application/openmetrics-text"},
    )


async def test_no_canary_in_any_response_or_log_line(gateway: Gateway, upstream: Upstream) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        driver = Driver(client)
        await exercise(driver)

    # The paths the sweep claims to cover were really taken.
    statuses = Counter(exchange.status for exchange in driver.exchanges)
    assert {200, 401, 403, 404, 405, 413, 422, 502, 503, 504} <= set(statuses), statuses
    expected_types = {
        "connection_error",
        "query_error",
        "timeout",
        "invalid_request",
        "http_error",
        "circuit_open",
        "not_found",
    }
    assert expected_types <= driver.error_types(), driver.error_types()
    assert {"fail", "slow", "drop", "echo", "redirect"} <= set(upstream.hits)

    for exchange in driver.exchanges:
        assert not leaks(exchange.text), (
            f"{exchange.label}: {leaks(exchange.text)}\n{exchange.text}"
        )

    # Stop the gateway so its shutdown lines are in the log too.
    gateway.process.send_signal(signal.SIGINT)
    await asyncio.to_thread(gateway.process.wait, 30)
    log = gateway.output.read_text(errors="replace")
    audit_lines = [line for line in log.splitlines() if '"logger":"iogate.audit"' in line]
    for exchange in driver.exchanges:
        if exchange.request_id is not None:
            tag = f'"request_id":"{exchange.request_id}"'
            assert sum(tag in line for line in audit_lines) == 1, exchange.label
    for line in log.splitlines():
        assert not leaks(line), f"{leaks(line)} in a log line:\n{line}"


def test_check_command_output_has_no_canary(tmp_path: Path, postgres_url: str) -> None:
    """``iogate check`` pings everything and prints what failed."""
    config = tmp_path / "iogate.toml"
    write_config(config, Upstream(port=free_port()), tmp_path, postgres_url)
    result = subprocess.run(
        [*IOGATE, "check", "--config", str(config), "--timeout", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ADMIN_KEY": ADMIN_KEY},
    )
    assert result.returncode == 1  # pg_down, cache_down and the upstream are down
    output = result.stdout + result.stderr
    assert "pg_down" in output
    assert not leaks(output), leaks(output)


def test_config_errors_do_not_echo_secrets(tmp_path: Path) -> None:
    """A malformed URL is refused by ``serve`` and ``check`` without its password."""
    config = tmp_path / "iogate.toml"
    bad_urls = {
        "redis": f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:notaport/0",
        "mysql": f"mysql://root:{quote(MYSQL_PASSWORD, safe='')}@127.0.0.1:notaport/test",
        "postgresql": pg_url(PG_PASSWORD, 99999),
    }
    for kind, url in bad_urls.items():
        config.write_text(f'[databases.x]\ntype = "{kind}"\nurl = "{url}"\n')
        commands = [["check", "--timeout", "2"]]
        if kind != "postgresql":  # asyncpg reads the port only when connecting
            commands.append(["serve", "--port", str(free_port())])
        for command in commands:
            result = subprocess.run(
                [*IOGATE, command[0], "--config", str(config), *command[1:]],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            assert not leaks(output), f"{kind} {command[0]}: {leaks(output)}\n{output}"


def test_the_redactor_knows_every_form_of_a_dsn_password(tmp_path: Path) -> None:
    """Were a driver to log the password it decoded from the URL, it is masked too."""
    settings = parse_settings(
        f'[databases.pg]\ntype = "postgresql"\nurl = "{pg_url(PG_PASSWORD, 5432)}"\n', env={}
    )
    redact = Redactor(secrets_of(settings))
    for text in (PG_PASSWORD, quote(PG_PASSWORD, safe="")):
        assert redact(f"auth failed with {text}!") == "auth failed with ***!"
