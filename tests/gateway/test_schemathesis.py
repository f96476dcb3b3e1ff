"""Property-based API testing: schemathesis against the gateway's own OpenAPI.

Every operation the schema declares is called with generated requests
(bounded and derandomized, so a run is repeatable and short) on an
in-process gateway with SQLite, a memory cache, a local upstream API and a
named operation, with a valid key. Each response must not be a server error,
must have a status the schema declares, and must match the schema declared
for that status and content type (Result, problem+json, ...).

The upstream answers 200 to anything: a 5xx from the gateway here is the
gateway's own fault, never a faithful report of an upstream failure.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings

KEY = "schemathesis-key-0c4f9b21"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,  # drops or spoils the key: the route must refuse
]


class AlwaysFine(BaseHTTPRequestHandler):
    """An upstream that answers every method and path with a small JSON body."""

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

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysFine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, upstream_url: str) -> Iterator[Any]:
    directory: Path = tmp_path_factory.mktemp("schemathesis")
    config = f"""
[gateway]
request_timeout = 5
allowed_hosts = ["testserver"]  # schemathesis's ASGI client; any other Host gets 421

[[gateway.api_keys]]
name = "fuzz"
key = "{KEY}"
scopes = ["db:*:write", "api:*", "batch", "jobs", "ops:*", "observe"]

[jobs]
store = "sqlite:///{directory / "jobs.db"}"

[databases.main]
type = "sqlite"
path = "{directory / "fuzz.db"}"

[databases.cache]
type = "memory"

[apis.external_api]
base_url = "{upstream_url}"
timeout = 2
retry = {{ attempts = 1 }}

[operations.get_user]
database = "main"
query = "SELECT ? AS id"
params = ["id"]
"""
    app = create_app(parse_settings(config, env={}))
    try:
        # schemathesis starts the app's lifespan (resources open) on first use.
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()  # close the resources now, not at interpreter exit


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_gateway_conforms_to_its_openapi(case: Any) -> None:
    aim(case)
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=CHECKS)


def test_gateway_statefully_follows_its_links(api_schema: Any) -> None:
    """Sequences of calls along the schema's OpenAPI links (``GET /operations``
    names what ``POST /operations/{name}`` runs), with the same checks."""
    links = api_schema.raw_schema["paths"]["/operations"]["get"]["responses"]["200"]["links"]
    assert "RunOperation" in links  # without a link the stateful run has nothing to do

    calls: list[tuple[str, Any, int]] = []
    listed: set[str] = set()

    class Machine(api_schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": {"Authorization": f"Bearer {KEY}"}}

        def before_call(self, case: Any) -> None:
            if case.path != "/operations/{name}":  # that one's name must come from the link
                aim(case)

        def after_call(self, response: Any, case: Any) -> None:
            name = (case.path_parameters or {}).get("name")
            calls.append((f"{case.method} {case.path}", name, response.status_code))
            if case.path == "/operations" and response.status_code == 200:
                listed.update(op["name"] for op in response.json()["operations"])

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs or None)

    Machine.run(
        settings=settings(
            max_examples=15,
            stateful_step_count=4,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    # The link was followed: an operation the listing named was run by that
    # name (a generated name is almost never a configured one).
    assert "get_user" in listed
    linked = [c for c in calls if c[0] == "POST /operations/{name}" and c[1] in listed]
    assert linked, calls
    assert all(status < 500 for *_, status in calls), calls


# Generated names almost never match a configured one, so without help every
# request would stop at "unknown database". Two in three are pointed at a
# real resource (chosen from the generated name, so runs stay repeatable) and
# reach the backends with whatever else was generated.
KNOWN = {
    "db_name": ("main", "cache"),
    "api_name": ("external_api", "external_api"),
    "name": ("get_user", "get_user"),
}


def aim_at_known(values: dict[str, Any]) -> None:
    for field, known in KNOWN.items():
        value = values.get(field)
        if isinstance(value, str) and len(value) % 3:
            values[field] = known[len(value) % 3 - 1]


def aim(case: Any) -> None:
    if isinstance(case.path_parameters, dict):
        aim_at_known(case.path_parameters)
    body = case.body
    if isinstance(body, dict):
        aim_at_known(body)
        operations = body.get("operations")
        for operation in operations if isinstance(operations, list) else []:
            if isinstance(operation, dict):
                aim_at_known(operation)
