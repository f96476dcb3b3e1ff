"""DirectRoute: FastAPI's semantics for the hot routes, without its generic handler."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, Response

from iogate.gateway.app import create_app
from iogate.gateway.deps import DirectDispatch, DirectRoute
from iogate.gateway.settings import parse_settings


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    n: int = 0


def caller_thread(request: Request) -> int:
    return threading.get_ident()


async def tag(request: Request) -> str:
    return request.headers.get("x-tag", "none")


async def endpoint(
    request: Request,
    body: Body,
    thread: Annotated[int, Depends(caller_thread)],
    label: Annotated[str, Depends(tag)],
) -> Response:
    return JSONResponse(
        {"name": body.name, "n": body.n, "thread": thread, "label": label},
        headers={"x-loop-thread": str(threading.get_ident())},
    )


async def with_query(request: Request, body: Body, limit: int = 5) -> Response:
    return JSONResponse({"name": body.name, "limit": limit})


class Teapot(Exception):
    pass


async def failing(request: Request, body: Body) -> Response:
    raise Teapot(body.name)


def app_with(route_class: type[APIRoute]) -> FastAPI:
    router = APIRouter(route_class=route_class)
    router.add_api_route("/run", endpoint, methods=["POST"])
    router.add_api_route("/query", with_query, methods=["POST"])
    router.add_api_route("/fail", failing, methods=["POST"])
    app = FastAPI()
    app.include_router(router)

    @app.exception_handler(Teapot)
    async def teapot(request: Request, exc: Teapot) -> Response:
        return JSONResponse({"teapot": str(exc)}, status_code=418)

    return app


@pytest.fixture
def direct() -> Iterator[TestClient]:
    with TestClient(app_with(DirectRoute)) as client:
        yield client


@pytest.fixture
def plain() -> Iterator[TestClient]:
    with TestClient(app_with(APIRoute)) as client:
        yield client


def test_dependencies_run_inline_in_declaration_order(direct: TestClient) -> None:
    response = direct.post("/run", json={"name": "a", "n": 2}, headers={"x-tag": "t1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["n"], body["label"]) == ("a", 2, "t1")
    # A sync dependency ran on the event loop's thread, not in the thread pool.
    assert body["thread"] == int(response.headers["x-loop-thread"])


def test_plain_route_runs_sync_dependencies_in_the_thread_pool(plain: TestClient) -> None:
    """The contrast the test above relies on: FastAPI's own handler hops threads."""
    response = plain.post("/run", json={"name": "a"})
    assert response.status_code == 200, response.text
    assert response.json()["thread"] != int(response.headers["x-loop-thread"])


BAD_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("missing field", {"json": {"n": 1}}),
    ("empty name", {"json": {"name": ""}}),
    ("wrong type", {"json": {"name": "a", "n": "many"}}),
    ("extra field", {"json": {"name": "a", "password": "x"}}),
    ("not an object", {"json": [1, 2]}),
    ("empty body", {"content": b"", "headers": {"content-type": "application/json"}}),
    ("text/plain", {"content": b'{"name": "a"}', "headers": {"content-type": "text/plain"}}),
    ("no content-type", {"content": b'{"name": "a"}'}),
    ("broken json", {"content": b'{"name": ', "headers": {"content-type": "application/json"}}),
]


@pytest.mark.parametrize(("label", "request_kwargs"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_invalid_bodies_fail_as_with_fastapi(
    direct: TestClient, plain: TestClient, label: str, request_kwargs: dict[str, Any]
) -> None:
    ours = direct.post("/run", **request_kwargs)
    theirs = plain.post("/run", **request_kwargs)
    assert (ours.status_code, theirs.status_code) == (422, 422), (ours.text, theirs.text)

    def shape(errors: list[dict[str, Any]]) -> list[tuple[str, tuple[Any, ...]]]:
        return [
            (
                # pydantic's JSON mode words "an array where an object belongs" differently.
                "model_attributes_type" if e["type"] == "model_type" else e["type"],
                # FastAPI adds the parse position to a JSON syntax error's location.
                tuple(e["loc"][:1] if e["type"] == "json_invalid" else e["loc"]),
            )
            for e in errors
        ]

    assert shape(ours.json()["detail"]) == shape(theirs.json()["detail"])


def test_a_route_with_query_parameters_falls_back_to_fastapi(direct: TestClient) -> None:
    response = direct.post("/query?limit=7", json={"name": "q"})
    assert response.json() == {"name": "q", "limit": 7}
    refused = direct.post("/query?limit=lots", json={"name": "q"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["query", "limit"]


def test_exceptions_reach_the_apps_handlers(direct: TestClient) -> None:
    response = direct.post("/fail", json={"name": "earl grey"})
    assert (response.status_code, response.json()) == (418, {"teapot": "earl grey"})


def test_other_methods_are_refused_as_usual(direct: TestClient) -> None:
    response = direct.get("/run")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_openapi_still_describes_body_and_dependencies(direct: TestClient) -> None:
    operation = direct.get("/openapi.json").json()["paths"]["/run"]["post"]
    schema_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.endswith("/Body")


# -- the gateway's /database/execute ------------------------------------------------

KEY = "direct-route-test-key-0123456789"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[TestClient]:
    config = f"""
[[gateway.api_keys]]
name = "reader"
key = "{KEY}"
scopes = ["db:main:read"]

[databases.main]
type = "sqlite"
path = "{tmp_path / "direct.db"}"
"""
    with TestClient(
        create_app(parse_settings(config, env={})), base_url="http://localhost"
    ) as client:
        yield client


def test_database_execute_authenticates_before_validating_the_body(gateway: TestClient) -> None:
    bad_body = {"db_name": "main"}
    assert gateway.post("/database/execute", json=bad_body).status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    refused = gateway.post("/database/execute", json=bad_body, headers=auth)
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert "body.query" in refused.json()["detail"]


def test_database_execute_runs_read_only_for_a_reader(gateway: TestClient) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    ok = gateway.post(
        "/database/execute",
        json={"db_name": "main", "query": "SELECT ? AS v", "params": [7]},
        headers=auth,
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["data"] == [{"v": 7}]
    write = gateway.post(
        "/database/execute", json={"db_name": "main", "query": "CREATE TABLE t (x)"}, headers=auth
    )
    assert write.status_code == 403, write.text
    assert write.json()["error_type"] == "forbidden_statement"


def test_database_execute_is_documented_with_body_and_bearer_scheme(gateway: TestClient) -> None:
    operation = gateway.get("/openapi.json").json()["paths"]["/database/execute"]["post"]
    content = operation["requestBody"]["content"]["application/json"]
    assert content["schema"]["$ref"].endswith("/DatabaseExecuteRequest")
    assert {"bearer": []} in operation["security"]


# -- DirectDispatch -----------------------------------------------------------------


async def guarded(request: Request, body: Body) -> Response:
    raise HTTPException(403, f"not for {body.name}")


async def broken(request: Request, body: Body) -> Response:
    raise RuntimeError("boom")


def dispatching_app() -> FastAPI:
    app = app_with(DirectRoute)
    router = APIRouter(route_class=DirectRoute)
    router.add_api_route("/guarded", guarded, methods=["POST"])
    router.add_api_route("/broken", broken, methods=["POST"])
    app.include_router(router, prefix="/v1")

    @app.exception_handler(403)
    async def forbidden(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"forbidden": exc.detail}, status_code=403)

    app.add_middleware(DirectDispatch)
    return app


def dispatcher_of(app: FastAPI) -> DirectDispatch:
    layer: Any = app.middleware_stack
    while not isinstance(layer, DirectDispatch):
        layer = layer.app
    return layer


def test_dispatch_learns_static_direct_routes_then_serves_them_itself() -> None:
    app = dispatching_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        for n in range(3):
            response = client.post("/run", json={"name": "a", "n": n})
            assert response.json()["n"] == n
            assert response.json()["thread"] == int(response.headers["x-loop-thread"])
        client.post("/query?limit=1", json={"name": "q"})  # falls back: never learned
        client.post("/v1/guarded", json={"name": "x"})  # learned under its prefix
        assert set(dispatcher_of(app)._routes) == {("POST", "/run"), ("POST", "/v1/guarded")}


def test_dispatched_requests_fail_as_routed_ones_do() -> None:
    app = dispatching_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(2):  # the first is routed by FastAPI, the second dispatched
            teapot = client.post("/fail", json={"name": "oolong"})
            assert (teapot.status_code, teapot.json()) == (418, {"teapot": "oolong"})
            forbidden = client.post("/v1/guarded", json={"name": "eve"})
            assert (forbidden.status_code, forbidden.json()) == (403, {"forbidden": "not for eve"})
            invalid = client.post("/run", json={"n": 1})
            assert invalid.status_code == 422
            assert invalid.json()["detail"][0]["loc"] == ["body", "name"]
            assert client.post("/v1/broken", json={"name": "x"}).status_code == 500
            assert client.get("/run").status_code == 405
        assert ("POST", "/v1/broken") in dispatcher_of(app)._routes


def test_gateway_middleware_still_wraps_dispatched_requests(tmp_path: Path) -> None:
    config = f"""
[gateway]
max_body_bytes = 2048

[databases.main]
type = "sqlite"
path = "{tmp_path / "dispatch.db"}"
"""
    app = create_app(parse_settings(config, env={}))
    if not any(m.cls is DirectDispatch for m in app.user_middleware):
        # Innermost, as app.py adds it: inside the body limit, audit and request id.
        app.user_middleware.append(Middleware(DirectDispatch))
    with TestClient(app, base_url="http://localhost") as client:
        body = {"db_name": "main", "query": "SELECT ? AS v", "params": [1]}
        for _ in range(2):
            ok = client.post("/database/execute", json=body)
            assert ok.json()["data"] == [{"v": 1}]
            assert ok.headers["x-request-id"]
        assert ("POST", "/database/execute") in dispatcher_of(app)._routes
        big = client.post(
            "/database/execute",
            content=b"x" * 5000,
            headers={"content-type": "application/json"},
        )
        assert big.status_code == 413
