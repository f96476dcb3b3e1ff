"""Restart recovery through a real ``iogate serve``, under a bounded load.

The gateway's PostgreSQL and Redis are throwaway servers of this session,
restarted (fast, immediate), killed with SIGKILL, or told to ``SHUTDOWN``
while clients keep sending requests. Promised, for every request:

- no 500, and no hang: each ends within ``request_timeout`` + 0.5 s;
- while the server is away, 503 with ``Retry-After``;
- served again within 2 s of the server accepting connections again, and
  nothing but 200 from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.gateway_process import GatewayProcess, running_gateway
from tests.faults.servers import ThrowawayPostgres, ThrowawayRedis

REQUEST_TIMEOUT = 3.0
SLACK = 0.5
BACK_WITHIN = 2.0  # the bound, from the server accepting again to a 200
OUTAGE = 1.0  # seconds the server stays away
WORKERS = 4  # concurrent clients on the resource under test
AFTER = 3.0  # seconds of load after the server is back


@dataclass(slots=True)
class Answer:
    sent: float
    ended: float
    status: int  # 0: no HTTP answer at all
    error_type: str | None
    retry_after: str | None
    detail: str = ""


@dataclass
class Load:
    """``WORKERS`` clients sending one kind of request in a loop until stopped."""

    client: httpx.AsyncClient
    request: Callable[[int], tuple[str, dict[str, Any], Callable[[Any], bool]]]
    answers: list[Answer] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(w)) for w in range(WORKERS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _worker(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            path, body, check = self.request(worker * 1_000_000 + n)
            sent = time.monotonic()
            try:
                response = await self.client.post(path, json=body, timeout=REQUEST_TIMEOUT * 4)
            except httpx.HTTPError as exc:
                self.answers.append(Answer(sent, time.monotonic(), 0, None, None, repr(exc)))
                continue
            ended = time.monotonic()
            payload = response.json()
            if response.status_code == 200 and not check(payload.get("data")):
                # A reply that is not this request's own: the worst outcome.
                self.answers.append(Answer(sent, ended, -1, "mismatch", None, response.text))
                continue
            self.answers.append(
                Answer(
                    sent,
                    ended,
                    response.status_code,
                    payload.get("error_type"),
                    response.headers.get("retry-after"),
                    response.text[:300],
                )
            )
            await asyncio.sleep(0.01)


def pg_request(marker: int) -> tuple[str, dict[str, Any], Callable[[Any], bool]]:
    body = {"db_name": "pg", "query": "SELECT $1::bigint AS marker", "params": [marker]}
    return "/database/execute", body, lambda data: data == [{"marker": marker}]


def redis_request(marker: int) -> tuple[str, dict[str, Any], Callable[[Any], bool]]:
    body = {"db_name": "cache", "query": "k", "params": {"operation": "get", "key": "recovery"}}
    return "/database/execute", body, lambda data: data == "present"


def judge(answers: list[Answer], down_at: float, back_at: float, label: str) -> float:
    """Check every promise; the seconds from ``back_at`` to the first 200."""
    assert answers, "no request was answered"
    slowest = max(a.ended - a.sent for a in answers)
    bad = [a for a in answers if a.status not in (200, 503)]
    assert not bad, f"{label}: answers other than 200/503: {bad[:5]}"
    assert slowest < REQUEST_TIMEOUT + SLACK, f"{label}: a request took {slowest:.2f}s"
    unavailable = [a for a in answers if a.status == 503]
    assert all(a.retry_after for a in unavailable), f"{label}: 503 without Retry-After"
    assert all(a.sent >= down_at - 0.2 for a in unavailable), f"{label}: 503 before the fault"
    served = [a.ended for a in answers if a.status == 200 and a.sent >= back_at]
    assert served, f"{label}: nothing served after the server came back"
    to_first = min(served) - back_at
    late = [a for a in answers if a.status != 200 and a.sent >= back_at + BACK_WITHIN]
    print(
        f"{label}: {len(answers)} requests, {len(unavailable)} x 503, slowest {slowest:.2f}s, "
        f"first 200 {to_first:.2f}s after the server was back"
    )
    assert to_first < BACK_WITHIN, f"{label}: first 200 {to_first:.2f}s after the restart"
    assert not late, f"{label}: failures {BACK_WITHIN}s after the restart: {late[:3]}"
    return to_first


def config(pg: ThrowawayPostgres, redis: ThrowawayRedis) -> str:
    return f"""request_timeout = {REQUEST_TIMEOUT}

[databases.pg]
type = "postgresql"
url = "{pg.url}"
max_connections = {WORKERS}
acquire_timeout = 2
statement_timeout = 2

[databases.cache]
type = "redis"
url = "{redis.url}"
"""


async def wait_served(client: httpx.AsyncClient, request: Any) -> None:
    path, body, check = request(1)
    end = time.monotonic() + 15
    while time.monotonic() < end:
        with contextlib.suppress(httpx.HTTPError):
            response = await client.post(path, json=body, timeout=REQUEST_TIMEOUT + 1)
            if response.status_code == 200 and check(response.json()["data"]):
                return
        await asyncio.sleep(0.05)
    pytest.fail("the resource was not served before the fault")


def redis_command(port: int, *args: str) -> None:
    """Send one command and do not wait for the reply (SHUTDOWN sends none)."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), 2) as sock:
        sock.sendall(payload.encode())
        with contextlib.suppress(OSError):
            sock.recv(64)


def set_marker(redis: ThrowawayRedis) -> None:
    redis_command(redis.port, "SET", "recovery", "present")


@pytest.mark.parametrize(
    "fault", ["pg_fast", "pg_immediate", "pg_kill", "redis_shutdown", "redis_kill"]
)
async def test_served_again_after_a_restart(
    throwaway_postgres: ThrowawayPostgres,
    throwaway_redis: ThrowawayRedis,
    tmp_path: Path,
    fault: str,
) -> None:
    pg, redis = throwaway_postgres, throwaway_redis
    set_marker(redis)
    request = pg_request if fault.startswith("pg") else redis_request
    gateway: GatewayProcess
    async with (
        running_gateway(tmp_path, config(pg, redis)) as gateway,
        httpx.AsyncClient(base_url=gateway.base) as client,
    ):
        await wait_served(client, request)
        load = Load(client, request)
        load.start()
        try:
            await asyncio.sleep(0.5)
            down_at = time.monotonic()
            await asyncio.to_thread(_take_down, pg, redis, fault)
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(_bring_back, pg, redis, fault)
            back_at = time.monotonic()
            await asyncio.sleep(AFTER)
        finally:
            await load.stop()
            # Whatever happened, the session's servers are left running.
            await asyncio.to_thread(_ensure_running, pg, redis)
        judge(load.answers, down_at, back_at, f"{fault} [{uuid.uuid4().hex[:4]}]")
        assert "Traceback" not in gateway.log_text()


def _take_down(pg: ThrowawayPostgres, redis: ThrowawayRedis, fault: str) -> None:
    if fault == "pg_fast":
        pg.stop("fast")
    elif fault == "pg_immediate":
        pg.stop("immediate")
    elif fault == "pg_kill":
        pg.kill()
    elif fault == "redis_shutdown":
        redis_command(redis.port, "SHUTDOWN", "NOSAVE")
        redis.stop()  # reaps the process, which has already exited
    else:
        redis.kill()


def _bring_back(pg: ThrowawayPostgres, redis: ThrowawayRedis, fault: str) -> None:
    if fault.startswith("pg"):
        _start_postgres(pg)
    else:
        redis.start()
        set_marker(redis)  # no persistence: the key is gone with the server


def _start_postgres(pg: ThrowawayPostgres) -> None:
    """Start again; after a SIGKILL the orphaned backends may hold the shared
    memory for a moment, and the postmaster refuses to start until they exit."""
    end = time.monotonic() + 15
    while True:
        try:
            pg.start()
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)  # a subprocess to wait for, in a worker thread


def _ensure_running(pg: ThrowawayPostgres, redis: ThrowawayRedis) -> None:
    try:
        socket.create_connection(("127.0.0.1", pg.port), 1).close()
    except OSError:
        _start_postgres(pg)
    try:
        socket.create_connection(("127.0.0.1", redis.port), 1).close()
    except OSError:
        redis.start()
