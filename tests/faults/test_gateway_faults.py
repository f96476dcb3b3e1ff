"""The gateway keeps ``request_timeout`` and starts without its databases.

A real ``iogate serve`` whose PostgreSQL is reached through a
:class:`FaultProxy`. Blackholed (connections accepted, never answered):

- an atomic batch on a ``read_only`` database ends within ``request_timeout``
  + 0.5 s, cold (nothing ever connected) and warm (measured 20 s against 3 s);
- the gateway started while PostgreSQL is unreachable serves ``/health`` at
  once (measured 50 s), answers ``/ready`` 503 meanwhile, and serves the
  database as soon as it is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from iogate import AsyncOperationOrchestrator, Result
from iogate.backends.base import AsyncDatabaseManager, Transaction
from iogate.core.deadline import Deadline
from iogate.gateway.app import STARTUP_OPEN_WAIT
from tests.conftest import poll
from tests.faults.gateway_process import running_gateway
from tests.faults.proxy import FaultProxy

REQUEST_TIMEOUT = 3.0
SLACK = 0.5
BACK_WITHIN = 2.0
KEY = "k-" + "0123456789abcdef" * 2
ATOMIC = {
    "atomic": True,
    "operations": [
        {"type": "database", "db_name": "pg", "query": "SELECT 1 AS one"},
        {"type": "database", "db_name": "pg", "query": "SELECT 2 AS two"},
    ],
}
SINGLE = {"db_name": "pg", "query": "SELECT 1 AS one"}


def config(pg_url: str, *, keys: bool, acquire_timeout: float = 2) -> str:
    text = f"""request_timeout = {REQUEST_TIMEOUT}
"""
    if keys:  # a key makes raw SQL untrusted: the guarded, read-only transaction path
        text += """
[[gateway.api_keys]]
name = "writer"
key = "${FAULT_KEY}"
scopes = ["db:*:write", "batch"]
"""
    return (
        text
        + f"""
[databases.pg]
type = "postgresql"
url = "{pg_url}"
read_only = true
acquire_timeout = {acquire_timeout}
statement_timeout = 2
"""
    )


async def timed_post(
    client: httpx.AsyncClient, path: str, body: Any
) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = await client.post(path, json=body, timeout=REQUEST_TIMEOUT * 10)
    return time.monotonic() - started, response


def assert_failed_in_time(took: float, response: httpx.Response, what: str) -> None:
    print(f"{what}: {took:.2f}s -> {response.status_code}")
    assert response.status_code != 500, response.text
    assert took < REQUEST_TIMEOUT + SLACK, f"{what}: {took:.2f}s {response.text}"
    body = response.json()
    results = body.get("results", [body])
    assert all(not r["success"] for r in results), body
    assert {r["error_type"] for r in results} <= {
        "timeout",
        "connection_error",
        "rolled_back",
        "pool_exhausted",
    }, body


@pytest.mark.parametrize("keys", [False, True], ids=["trusted", "guarded"])
async def test_atomic_batch_on_read_only_postgres_keeps_request_timeout(
    pg_fault: FaultProxy,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: bool,
) -> None:
    monkeypatch.setenv("FAULT_KEY", KEY)
    headers = {"Authorization": f"Bearer {KEY}"} if keys else {}
    await pg_fault.blackhole()  # cold: the gateway never had a connection
    async with (
        running_gateway(tmp_path, config(pg_fault.url(postgres_url), keys=keys)) as gateway,
        httpx.AsyncClient(base_url=gateway.base, headers=headers) as client,
    ):
        took, response = await timed_post(client, "/batch/execute", ATOMIC)
        assert_failed_in_time(took, response, "cold atomic batch")
        took, response = await timed_post(client, "/database/execute", SINGLE)
        assert_failed_in_time(took, response, "cold statement")

        await pg_fault.restore()
        assert await poll(lambda: _served(client), timeout=REQUEST_TIMEOUT + BACK_WITHIN)
        await pg_fault.blackhole()  # warm: the pooled connection goes silent
        took, response = await timed_post(client, "/batch/execute", ATOMIC)
        assert_failed_in_time(took, response, "warm atomic batch")
        took, response = await timed_post(client, "/batch/execute", ATOMIC)
        assert_failed_in_time(took, response, "warm atomic batch, again")

        await pg_fault.restore()
        assert await poll(lambda: _served(client), timeout=REQUEST_TIMEOUT + BACK_WITHIN)


async def _served(client: httpx.AsyncClient) -> bool:
    response = await client.post("/batch/execute", json=ATOMIC, timeout=REQUEST_TIMEOUT + 1)
    return response.status_code == 200 and all(r["success"] for r in response.json()["results"])


async def test_gateway_starts_while_postgres_is_unreachable(
    pg_fault: FaultProxy, postgres_url: str, tmp_path: Path
) -> None:
    # A connect timeout well above the start-up wait, as on a slow network:
    # start-up used to wait for it (measured 50 s with several resources).
    text = config(pg_fault.url(postgres_url), keys=False, acquire_timeout=10)
    (tmp_path / "healthy").mkdir()
    async with running_gateway(tmp_path / "healthy", text) as healthy:
        baseline = healthy.startup_s

    await pg_fault.blackhole()
    (tmp_path / "cut").mkdir()
    async with (
        running_gateway(tmp_path / "cut", text) as gateway,
        httpx.AsyncClient(base_url=gateway.base) as client,
    ):
        print(f"start-up: {baseline:.2f}s healthy, {gateway.startup_s:.2f}s blackholed")
        assert gateway.startup_s < baseline + STARTUP_OPEN_WAIT + 3.0  # a loaded machine
        response = await client.get("/ready", timeout=5)
        assert response.status_code == 503
        assert "pg" in response.json()["down"]
        took, response = await timed_post(client, "/database/execute", SINGLE)
        assert response.status_code in (503, 504), response.text
        assert took < REQUEST_TIMEOUT + SLACK

        await pg_fault.restore()
        restored = time.monotonic()
        assert await poll(lambda: _single_ok(client), timeout=BACK_WITHIN, interval=0.05)
        print(f"served {time.monotonic() - restored:.2f}s after the restore")
        assert (await client.get("/ready", timeout=5)).status_code == 200


async def _single_ok(client: httpx.AsyncClient) -> bool:
    response = await client.post("/database/execute", json=SINGLE, timeout=REQUEST_TIMEOUT + 1)
    assert response.status_code != 500, response.text
    return response.status_code == 200


# -- the atomic batch's backstop, with a manager that ignores the deadline ----------------


class _StuckTransaction(Transaction):
    def __init__(self, stuck_in: str) -> None:
        super().__init__()
        self.stuck_in = stuck_in

    async def _execute(self, query: str, params: Any) -> Result:
        if self.stuck_in == "statement" and query == "stuck":
            await asyncio.sleep(3600)  # a step that does not keep the deadline
        return Result.ok([{"q": query}])


class _StuckManager(AsyncDatabaseManager):
    """A SQL manager that never honours a deadline: only the backstop ends its work."""

    backend = "postgresql"

    def __init__(self, stuck_in: str) -> None:
        super().__init__(name="stuck")
        self.stuck_in = stuck_in

    async def _open(self) -> None:
        return None

    async def _close(self) -> None:
        return None

    async def _ping(self) -> None:
        return None

    async def _execute(self, query: str, params: Any, **options: Any) -> Result:
        return Result.ok([])

    @asynccontextmanager
    async def _transaction(self, **options: Any) -> AsyncIterator[Transaction]:
        tx = _StuckTransaction(self.stuck_in)
        yield tx
        if self.stuck_in == "commit":
            await asyncio.sleep(3600)  # COMMIT sent, never answered
        tx.status = "rolled_back" if tx.failed else "committed"


@pytest.mark.parametrize(
    ("stuck_in", "expected"),
    [
        # The first statement ran, but nothing was committed.
        ("statement", ["rolled_back", "timeout", "rolled_back"]),
        ("commit", ["unknown_outcome"] * 3),
    ],
)
async def test_atomic_batch_backstop_ends_a_step_that_ignores_the_deadline(
    stuck_in: str, expected: list[str]
) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        orchestrator.add_manager("db", _StuckManager(stuck_in))
        operations = [
            {"type": "database", "db_name": "db", "query": q} for q in ("first", "stuck", "third")
        ]
        started = time.monotonic()
        results = await orchestrator.execute_batch_operations(
            operations, atomic=True, deadline=Deadline(0.5)
        )
        took = time.monotonic() - started
    assert took < 0.5 + SLACK
    assert [r.error_type for r in results] == expected, results
