"""POST/GET/DELETE /batch/jobs through the real app, embedded (SQLite store,
chunks run in the gateway), against SQLite and a local aiohttp upstream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings

READER = "reader-key-" + "r" * 16
WRITER = "writer-key-" + "w" * 16
OTHER = "other-key-" + "o" * 16


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[str]]]:
    keys: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        keys.append(request.headers.get("Idempotency-Key", ""))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", keys
    finally:
        await runner.cleanup()


@pytest.fixture
async def gateway(
    tmp_path: Path, upstream: tuple[str, list[str]]
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    config = f"""
[gateway]
max_batch_operations = 5

[[gateway.api_keys]]
name = "reader"
key = "{READER}"
scopes = ["db:lite:read", "jobs"]

[[gateway.api_keys]]
name = "writer"
key = "{WRITER}"
scopes = ["db:lite:write", "api:hooks", "jobs"]

[[gateway.api_keys]]
name = "other"
key = "{OTHER}"
scopes = ["db:lite:write", "jobs"]

[jobs]
store = "sqlite:///{tmp_path / "jobs.db"}"
chunk_size = 50

[databases.lite]
type = "sqlite"
path = "{tmp_path / "lite.db"}"

[apis.hooks]
base_url = "{upstream[0]}"
"""
    app = create_app(parse_settings(config, env={}))
    async with app.router.lifespan_context(app):
        orchestrator = app.state.orchestrator
        await orchestrator.execute_database_operation(
            "lite", "CREATE TABLE items (id INTEGER PRIMARY KEY, v INTEGER UNIQUE)"
        )
        await orchestrator.execute_database_operation(
            "lite", "CREATE TABLE keyed (k TEXT PRIMARY KEY, v INTEGER)"
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield app, http


@pytest.fixture
def client(gateway: tuple[Any, httpx.AsyncClient]) -> httpx.AsyncClient:
    return gateway[1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def inserts(count: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "database",
            "db_name": "lite",
            "query": "INSERT INTO items (v) VALUES (?)",
            "params": [i],
        }
        for i in range(count)
    ]


async def wait_done(client: httpx.AsyncClient, job_id: str, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        reply = await client.get(f"/batch/jobs/{job_id}?limit=0", headers=auth(key))
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        if body["status"] in ("done", "cancelled"):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)  # the job runs in the app's own task


async def test_a_job_runs_every_operation_once_beyond_the_batch_limit(
    client: httpx.AsyncClient,
) -> None:
    ops = inserts(1000)  # max_batch_operations is 5: a job is not a batch
    ops[500] = {"type": "database", "db_name": "lite", "query": "INSERT INTO items (v) VALUES (0)"}
    reply = await client.post("/batch/jobs", json={"operations": ops}, headers=auth(WRITER))
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["job_id"]
    assert reply.headers["location"] == f"/batch/jobs/{job_id}"
    body = await wait_done(client, job_id, WRITER)
    assert body["status"] == "done"
    assert (body["total"], body["done"], body["failed"], body["pending"]) == (1000, 1000, 1, 0)
    page = (
        await client.get(f"/batch/jobs/{job_id}?after=498&limit=3", headers=auth(WRITER))
    ).json()
    assert [r["index"] for r in page["results"]] == [499, 500, 501]
    assert page["results"][1]["error_type"] == "query_error"  # the duplicate v = 0
    assert page["next_after"] == 501
    streamed = await client.get(
        f"/batch/jobs/{job_id}", headers={**auth(WRITER), "Accept": "application/x-ndjson"}
    )
    lines = [orjson.loads(line) for line in streamed.content.splitlines()]
    assert [r["index"] for r in lines] == list(range(1000))
    assert sum(r["success"] for r in lines) == 999


async def test_references_work_across_a_chunk_and_api_calls_get_idempotency_keys(
    client: httpx.AsyncClient, upstream: tuple[str, list[str]]
) -> None:
    ops: list[Any] = inserts(60)
    ops[30] = {**ops[30], "id": "row"}
    ops[55] = {
        "type": "database",
        "db_name": "lite",
        "query": "SELECT ? AS seen",
        "params": [{"$ref": "row.rows_affected"}],
    }
    ops.append({"type": "api", "api_name": "hooks", "method": "POST", "endpoint": "/hook"})
    reply = await client.post("/batch/jobs", json={"operations": ops}, headers=auth(WRITER))
    job_id = reply.json()["job_id"]
    assert (await wait_done(client, job_id, WRITER))["failed"] == 0
    page = (await client.get(f"/batch/jobs/{job_id}?after=54&limit=1", headers=auth(WRITER))).json()
    assert page["results"][0]["data"] == [{"seen": 1}]
    assert upstream[1] == [f"iogate-{job_id}-60"]


async def test_sql_writes_can_record_their_idempotency_key(client: httpx.AsyncClient) -> None:
    """``{"$idempotency_key": null}`` is the operation's key: a unique column makes
    a write replayed after a crash a no-op (docs/jobs.md)."""
    ops = [
        {
            "type": "database",
            "db_name": "lite",
            "query": "INSERT INTO keyed (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING "
            "RETURNING k",
            "params": [{"$idempotency_key": None}, i],
        }
        for i in range(3)
    ]
    reply = await client.post("/batch/jobs", json={"operations": ops}, headers=auth(WRITER))
    job_id = reply.json()["job_id"]
    assert (await wait_done(client, job_id, WRITER))["failed"] == 0
    page = (await client.get(f"/batch/jobs/{job_id}", headers=auth(WRITER))).json()
    assert [r["data"] for r in page["results"]] == [
        [{"k": f"iogate-{job_id}-{i}"}] for i in range(3)
    ]


async def test_scopes_and_ownership(client: httpx.AsyncClient) -> None:
    ops = inserts(3)
    refused = await client.post("/batch/jobs", json={"operations": ops}, headers=auth(READER))
    assert refused.status_code == 403
    api = [{"type": "api", "api_name": "hooks", "method": "POST", "endpoint": "/hook"}]
    assert (
        await client.post("/batch/jobs", json={"operations": api}, headers=auth(OTHER))
    ).status_code == 403
    reply = await client.post("/batch/jobs", json={"operations": ops}, headers=auth(WRITER))
    job_id = reply.json()["job_id"]
    for key in (OTHER, READER):
        assert (await client.get(f"/batch/jobs/{job_id}", headers=auth(key))).status_code == 404
        assert (await client.delete(f"/batch/jobs/{job_id}", headers=auth(key))).status_code == 404
    assert (await client.get(f"/batch/jobs/{job_id}")).status_code == 401
    assert (await client.get("/batch/jobs/nope", headers=auth(WRITER))).status_code == 404


async def test_a_read_key_job_cannot_write(client: httpx.AsyncClient) -> None:
    """Raw SQL in a job runs under the submitting key's access, in the runner too."""
    ops = [
        {"type": "database", "db_name": "lite", "query": "SELECT count(*) AS n FROM items"},
    ]
    # The reader has no write scope: a job's SQL needs db:NAME:write, as a batch's.
    assert (
        await client.post("/batch/jobs", json={"operations": ops}, headers=auth(READER))
    ).status_code == 403


async def test_the_runner_applies_the_submitting_keys_guard(client: httpx.AsyncClient) -> None:
    """A write key may not run DDL: not in /batch/execute, not in a job's runner."""
    ops = [{"type": "database", "db_name": "lite", "query": "DROP TABLE items"}]
    reply = await client.post("/batch/jobs", json={"operations": ops}, headers=auth(WRITER))
    job_id = reply.json()["job_id"]
    assert (await wait_done(client, job_id, WRITER))["failed"] == 1
    page = (await client.get(f"/batch/jobs/{job_id}", headers=auth(WRITER))).json()
    assert page["results"][0]["error_type"] == "forbidden_statement"
    still = await client.post("/batch/jobs", json={"operations": inserts(1)}, headers=auth(WRITER))
    assert (await wait_done(client, still.json()["job_id"], WRITER))["failed"] == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"operations": []}, 422),
        ({"operations": "x"}, 422),
        ({"operations": [{}], "concurrency": 0}, 422),
        ({"operations": [{}], "atomic": True}, 422),
        ([1, 2], 422),
        (
            {
                "operations": [
                    {
                        "type": "database",
                        "db_name": "lite",
                        "query": "x",
                        "params": [{"$ref": "5.data"}],
                    }
                ]
            },
            422,
        ),
    ],
)
async def test_bad_jobs_are_refused_whole(
    client: httpx.AsyncClient, body: Any, status: int
) -> None:
    reply = await client.post("/batch/jobs", json=body, headers=auth(WRITER))
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")


async def test_invalid_json_is_a_problem(client: httpx.AsyncClient) -> None:
    reply = await client.post(
        "/batch/jobs",
        content=b"{not json",
        headers={**auth(WRITER), "Content-Type": "application/json"},
    )
    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("application/problem+json")


async def test_cancel_stops_a_running_job(gateway: tuple[Any, httpx.AsyncClient]) -> None:
    app, client = gateway
    slow = [
        {
            "type": "database",
            "db_name": "lite",
            # ~50 ms of work each: the job would take seconds.
            "query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "WHERE x < 200000) SELECT count(*) AS n FROM c",
        }
        for _ in range(400)
    ]
    reply = await client.post(
        "/batch/jobs", json={"operations": slow, "concurrency": 1}, headers=auth(WRITER)
    )
    job_id = reply.json()["job_id"]
    deadline = time.monotonic() + 10
    while (await client.get(f"/batch/jobs/{job_id}?limit=0", headers=auth(WRITER))).json()[
        "done"
    ] == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)  # polling the app's runner
    cancelled = await client.delete(f"/batch/jobs/{job_id}", headers=auth(WRITER))
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    # The runner sees the cancellation within CANCEL_POLL (0.5 s) and stops its
    # chunks: within a second nothing of the job is queued or running.
    dispatcher = (await app.state.jobs.service()).dispatcher
    stopped_by = time.monotonic() + 1.0
    while dispatcher.unfinished:
        assert time.monotonic() < stopped_by, "the runner still works on a cancelled job"
        await asyncio.sleep(0.02)  # polling the app's runner
    settled = (await client.get(f"/batch/jobs/{job_id}?limit=0", headers=auth(WRITER))).json()
    assert settled["status"] == "cancelled"
    assert settled["done"] < 400


async def test_disabled_jobs_answer_404_and_open_no_store(tmp_path: Path) -> None:
    config = f'[jobs]\nenabled = false\nstore = "sqlite:///{tmp_path / "jobs.db"}"\n'
    app = create_app(parse_settings(config, env={}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            reply = await http.post("/batch/jobs", json={"operations": inserts(1)})
            assert reply.status_code == 404
            assert "enabled = false" in reply.json()["detail"]
            assert (await http.get("/batch/jobs/abc")).status_code == 404
    assert not (tmp_path / "jobs.db").exists()


async def test_reading_a_job_before_any_was_submitted_creates_no_store(tmp_path: Path) -> None:
    config = f'[jobs]\nstore = "sqlite:///{tmp_path / "jobs.db"}"\n'
    app = create_app(parse_settings(config, env={}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            assert (await http.get("/batch/jobs/abc")).status_code == 404
            assert (await http.delete("/batch/jobs/abc")).status_code == 404
    assert not (tmp_path / "jobs.db").exists()


async def test_the_runner_does_not_log_under_the_submitting_request_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedded runner starts during the first job request; the operations
    it runs later are not that request's (their log lines carry no request id)."""
    caplog.set_level(logging.INFO, logger="iogate.operation")
    reply = await client.post(
        "/batch/jobs",
        json={"operations": inserts(3)},
        headers={**auth(WRITER), "X-Request-ID": "the-submitting-request"},
    )
    assert (await wait_done(client, reply.json()["job_id"], WRITER))["failed"] == 0
    ran = [r for r in caplog.records if r.name == "iogate.operation" and "lite" in r.getMessage()]
    assert ran  # grouped: one operation line may cover the three inserts
    assert {getattr(r, "request_id", None) for r in ran} == {None}
