"""Upstream APIs that fail: the retry budget holds, and faults end in time.

A local aiohttp upstream (never a mock of aiohttp) is reached directly for
the budget tests and through a ``FaultProxy`` for the fault tests: a
blackhole in the middle of a response, connections reset, replies cut after
``n`` bytes, connections refused. Each fault ends within the deadline +
0.5 s with ``timeout`` or ``connection_error`` (an API has no
``unknown_outcome``: a POST cut after it was sent is a ``connection_error``
that is never retried), the breaker counts every attempt, and through a real
``iogate serve`` the answer is 502/504, never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from iogate.backends.http import AsyncAPIManager
from iogate.core.deadline import Deadline
from iogate.resilience.budget import RetryBudget
from tests.conftest import free_port
from tests.fakes import FakeClock, RecordingSleep
from tests.faults.proxy import FaultProxy

DEADLINE = 1.0
SLACK = 0.5  # the bound: every path ends within its deadline + 0.5 s
BIG_BODY = b'{"rows": "' + b"x" * 65536 + b'"}'


@dataclass
class Upstream:
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    first_chunk_sent: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())


def _app(state: Upstream) -> web.Application:
    async def fail(request: web.Request) -> web.Response:
        state.hits[request.path] += 1
        await request.read()
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.json_response({"down": True}, status=503, headers=headers)

    async def stream(request: web.Request) -> web.StreamResponse:
        """Headers and a first chunk at once, then a chunk every 50 ms for 10 s."""
        state.hits[request.path] += 1
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"first chunk;")
        state.first_chunk_sent.set()
        for _ in range(200):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.release.wait(), 0.05)
            if state.release.is_set():
                break
            await response.write(b"more;")
        return response

    async def big(request: web.Request) -> web.Response:
        state.hits[request.path] += 1
        await request.read()
        return web.Response(body=BIG_BODY, content_type="application/json")

    async def ok(request: web.Request) -> web.Response:
        state.hits[request.path] += 1
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/v1/fail", fail)
    app.router.add_route("*", "/v1/stream", stream)
    app.router.add_route("*", "/v1/big", big)
    app.router.add_route("*", "/v1/ok", ok)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    runner = web.AppRunner(_app(state), shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


@pytest.fixture
async def proxy(upstream: Upstream) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", upstream.port) as relay:
        yield relay


@pytest.fixture
async def managers() -> AsyncIterator[Callable[..., AsyncAPIManager]]:
    made: list[AsyncAPIManager] = []

    def make(base_url: str, **options: Any) -> AsyncAPIManager:
        options.setdefault("name", "upstream")
        manager = AsyncAPIManager(base_url, **options)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.close()


class LedgerBudget(RetryBudget):
    """The default budget, recording deposits (False) and granted retries (True) in order."""

    __slots__ = ("ledger",)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.ledger: list[bool] = []

    def deposit(self) -> None:
        self.ledger.append(False)
        super().deposit()

    def try_withdraw(self) -> bool:
        granted = super().try_withdraw()
        if granted:
            self.ledger.append(True)
        return granted

    def worst_window(self, size: int) -> int:
        """Most retries granted between a deposit and the one ``size`` deposits later."""
        deposits = [i for i, granted in enumerate(self.ledger) if not granted]
        before = [0]
        for granted in self.ledger:
            before.append(before[-1] + granted)
        worst = 0
        for first in range(len(deposits) - size + 1):
            end = deposits[first + size] if first + size < len(deposits) else len(self.ledger)
            worst = max(worst, before[end] - before[deposits[first]])
        return worst


async def run_callers(
    call: Callable[[], Awaitable[Any]], *, callers: int, requests: int
) -> list[Any]:
    pending = iter(range(requests))
    results: list[Any] = []

    async def caller() -> None:
        for _ in pending:
            results.append(await call())

    await asyncio.gather(*(caller() for _ in range(callers)))
    return results


# -- the retry budget holds ------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [None, "1"])
async def test_budget_holds_for_50_concurrent_callers_against_an_always_failing_upstream(
    upstream: Upstream, managers: Callable[..., AsyncAPIManager], retry_after: str | None
) -> None:
    """1,000 GETs from 50 callers against an always-503 upstream (with and
    without ``Retry-After: 1``), time passing as the waits say: at most 1.2
    attempts per request over the run and over every window of 100."""
    clock = FakeClock()
    sleep = RecordingSleep(clock)  # waits of seconds take no time
    budget = LedgerBudget(clock=clock)
    api = managers(
        upstream.base_url,
        circuit_breaker=False,
        retry_budget=budget,
        clock=clock,
        sleep=sleep,
    )
    params = {"retry_after": retry_after} if retry_after else None
    results = await run_callers(lambda: api.get("/fail", params=params), callers=50, requests=1000)
    assert all(r.status_code == 503 for r in results)
    hits = upstream.hits["/v1/fail"]
    assert hits == sum(r.attempts for r in results)
    assert hits <= 1.2 * 1000
    assert hits >= 1.15 * 1000  # a budget, not a ban
    assert 100 + budget.worst_window(100) <= 1.2 * 100
    if retry_after:
        assert set(sleep.waits) == {1.0}
        assert clock.now - 1000.0 >= 100  # ~190 one-second waits passed: no time refill


async def test_retry_after_past_the_deadline_fails_now_with_the_upstreams_status(
    upstream: Upstream, managers: Callable[..., AsyncAPIManager]
) -> None:
    api = managers(upstream.base_url, timeout=2.0, circuit_breaker=False)
    started = time.monotonic()
    result = await api.get("/fail", params={"retry_after": "5"})
    assert time.monotonic() - started < SLACK
    assert (result.status_code, result.error_type, result.attempts) == (503, "http_error", 1)
    assert result.retry_after == 5.0
    assert upstream.hits["/v1/fail"] == 1


async def test_retry_after_with_the_budget_spent_fails_now(
    upstream: Upstream, managers: Callable[..., AsyncAPIManager]
) -> None:
    api = managers(upstream.base_url, circuit_breaker=False, retry_budget=RetryBudget(reserve=0))
    started = time.monotonic()
    result = await api.get("/fail", params={"retry_after": "1"})
    assert time.monotonic() - started < SLACK  # no wait for a retry that cannot happen
    assert (result.status_code, result.attempts) == (503, 1)
    assert api.retry_budget is not None
    assert api.retry_budget.denied == 1


# -- faults through the proxy ------------------------------------------------------------


async def _call_during(
    proxy: FaultProxy, upstream: Upstream, api: AsyncAPIManager, fault: str, method: str
) -> tuple[Any, float]:
    """Start the fault, make one call with a 1 s deadline; (Result, seconds)."""
    started = time.monotonic()
    if fault == "blackhole mid-response":
        call = asyncio.create_task(api.request(method, "/stream", deadline=Deadline(DEADLINE)))
        await asyncio.wait_for(upstream.first_chunk_sent.wait(), DEADLINE)
        await proxy.blackhole()
        result = await call
    else:
        if fault == "reset":
            await proxy.reset()
        elif fault == "close_after mid-body":
            await proxy.close_after(2000)
        elif fault == "refuse":
            await proxy.refuse()
        endpoint = "/big" if fault == "close_after mid-body" else "/ok"
        result = await api.request(method, endpoint, deadline=Deadline(DEADLINE))
    return result, time.monotonic() - started


FAULTS = ["blackhole mid-response", "reset", "close_after mid-body", "refuse"]
# (error_type, attempts for GET, attempts for POST). A POST that may have
# reached the upstream is never repeated; one that provably did not (refused)
# is, like a GET. A timeout uses the whole deadline: no time for another.
EXPECTED = {
    "blackhole mid-response": ("timeout", 1, 1),
    "reset": ("connection_error", 3, 1),
    "close_after mid-body": ("connection_error", 3, 1),
    "refuse": ("connection_error", 3, 3),
}


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("fault", FAULTS)
async def test_upstream_faults_end_within_the_deadline_with_the_right_error(
    upstream: Upstream,
    proxy: FaultProxy,
    managers: Callable[..., AsyncAPIManager],
    fault: str,
    method: str,
) -> None:
    api = managers(
        proxy.url(upstream.base_url),
        timeout=30,
        circuit_breaker={"failure_threshold": 100, "failure_ratio": None},
    )
    accepted_before = proxy.accepted
    result, elapsed = await _call_during(proxy, upstream, api, fault, method)
    error_type, get_attempts, post_attempts = EXPECTED[fault]
    assert result.error_type == error_type, result
    assert result.attempts == (get_attempts if method == "GET" else post_attempts)
    assert elapsed <= DEADLINE + SLACK
    # The breaker saw every attempt fail.
    assert api.breaker is not None
    assert api.breaker.snapshot()["consecutive_failures"] == result.attempts
    if fault in ("reset", "close_after mid-body"):
        # One connection per attempt: aiohttp's own silent repeat of a GET on
        # a dropped connection is off, so the budget counts every attempt.
        assert proxy.accepted - accepted_before == result.attempts


async def test_the_next_request_after_a_fault_is_served(
    upstream: Upstream, proxy: FaultProxy, managers: Callable[..., AsyncAPIManager]
) -> None:
    api = managers(proxy.url(upstream.base_url), timeout=30)
    assert (await api.get("/ok")).success
    await proxy.reset()
    assert not (await api.get("/ok")).success
    await proxy.restore()
    result = await api.get("/ok")
    assert result.success, result


# -- the same faults through a real gateway -----------------------------------------------


class Gateway:
    """``iogate serve`` as a child of this event loop, which keeps relaying meanwhile."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "iogate.toml"
        self.config.write_text(
            f'[gateway]\nhost = "127.0.0.1"\nport = {self.port}\nrequest_timeout = 10\n{config}',
            encoding="utf-8",
        )
        self.log = workdir / "gateway.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "iogate.cli",
                "serve",
                "--config",
                str(self.config),
                cwd=self.config.parent,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.base, timeout=1) as client:
            while True:
                assert self.process.returncode is None, self.log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        return
                assert time.monotonic() < deadline, self.log.read_text()
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


async def test_gateway_answers_upstream_faults_in_time_and_never_500(
    upstream: Upstream, proxy: FaultProxy, tmp_path: Path
) -> None:
    """Every fault, for a GET and a POST, through one real ``iogate serve``:
    502 (connection_error) or 504 (timeout) within ``Request-Timeout: 1`` +
    0.5 s, and ``/stats`` shows the breaker counting each attempt."""
    gateway = Gateway(
        tmp_path,
        f"""
[apis.up]
base_url = "{proxy.url(upstream.base_url)}"
timeout = 30
circuit_breaker = {{ failure_threshold = 1000, recovery_timeout = 5, failure_ratio = 1.0 }}
""",
    )
    await gateway.start()
    try:
        async with httpx.AsyncClient(base_url=gateway.base, timeout=30) as client:
            for fault in FAULTS:
                for method in ("GET", "POST"):
                    await proxy.restore()
                    before = (await client.get("/stats")).json()["apis"]["up"]["circuit"]
                    upstream.first_chunk_sent.clear()
                    endpoint = {"blackhole mid-response": "/stream", "close_after mid-body": "/big"}
                    body = {
                        "api_name": "up",
                        "method": method,
                        "endpoint": endpoint.get(fault, "/ok"),
                    }
                    started = time.monotonic()
                    request = asyncio.create_task(
                        client.post("/api/execute", json=body, headers={"Request-Timeout": "1"})
                    )
                    if fault == "blackhole mid-response":
                        await asyncio.wait_for(upstream.first_chunk_sent.wait(), DEADLINE)
                        await proxy.blackhole()
                    elif fault == "reset":
                        await proxy.reset()
                    elif fault == "close_after mid-body":
                        await proxy.close_after(2000)
                    else:
                        await proxy.refuse()
                    response = await request
                    elapsed = time.monotonic() - started
                    what = (fault, method, response.text)
                    assert elapsed <= DEADLINE + SLACK, (*what, elapsed)
                    assert response.status_code == (
                        504 if fault.startswith("blackhole") else 502
                    ), what
                    result = response.json()
                    assert result["error_type"] == EXPECTED[fault][0], what
                    after = (await client.get("/stats")).json()["apis"]["up"]["circuit"]
                    counted = after["consecutive_failures"] - before["consecutive_failures"]
                    assert counted == result["attempts"], (*what, before, after)
        assert "Traceback" not in gateway.log.read_text()
    finally:
        await gateway.stop()
