"""AsyncAPIManager against a real local aiohttp upstream, counting its hits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from iogate.backends.http import AsyncAPIManager, ExternalAPISession
from iogate.compat.context import get_api_session
from iogate.compat.retry import execute_with_retry
from iogate.core.deadline import Deadline
from iogate.core.errors import APIConnectionError, CircuitOpenError, ClosedError
from iogate.core.events import OperationEvent, add_hook, remove_hook
from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator
from iogate.resilience.budget import RetryBudget
from tests.fakes import FakeClock, RecordingSleep

from .conftest import SECRET_TOKEN, Canary, Upstream

MakeManager = Callable[..., AsyncAPIManager]


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens here once the socket is closed


# -- basics ---------------------------------------------------------------------------


async def test_get_returns_parsed_json_status_and_headers(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager() as api:
        result = await api.get("/ok", params={"include": "profile", "n": 2, "flag": True})
    assert result.success
    assert result.data == {
        "ok": True,
        "method": "GET",
        "query": {"include": "profile", "n": "2", "flag": "true"},
    }
    assert result.status_code == 200
    assert result.headers is not None
    assert result.headers["Content-Type"].startswith("application/json")
    assert (result.resource, result.operation, result.attempts) == ("upstream", "GET", 1)
    assert upstream.hits["/v1/ok"] == 1


async def test_seed_call_shapes(upstream: Upstream) -> None:
    manager = AsyncAPIManager(upstream.base_url, max_connections=30, timeout=60)
    await manager.initialize_session()
    try:
        assert (await manager.get("/ok")).success
        posted = await manager.post("/echo", {"name": "John"})
        assert posted.data["body"] == '{"name":"John"}'
        assert posted.data["headers"]["Content-Type"] == "application/json"
        for verb in (manager.put, manager.patch, manager.delete):
            assert (await verb("/ok")).success
    finally:
        await manager.close()
    assert upstream.hits["/v1/ok"] == 4


async def test_text_body_when_not_json(make_manager: MakeManager) -> None:
    async with make_manager() as api:
        result = await api.get("/text")
    assert result.data == "plain words"


async def test_non_2xx_is_http_error_with_size_capped_body(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager() as api:
        result = await api.get("/status/404", params={"size": 100_000})
    assert not result.success
    assert result.error_type == "http_error"
    assert result.status_code == 404
    assert isinstance(result.data, str)
    assert len(result.data) == 4096
    assert result.truncated
    assert result.error == "GET /v1/status/404: upstream answered 404"


# -- retries ------------------------------------------------------------------------------


async def test_get_is_retried_until_success(
    upstream: Upstream, make_manager: MakeManager, sleep: RecordingSleep
) -> None:
    async with make_manager() as api:
        result = await api.get("/flaky/2/a")
    assert result.success
    assert result.attempts == 3
    assert upstream.hits["/v1/flaky/2/a"] == 3
    assert len(sleep.waits) == 2
    assert all(0 <= w <= 0.2 for w in sleep.waits)  # full jitter under 0.1, 0.2


@pytest.mark.parametrize(
    ("status", "expected_hits"),
    [(429, 3), (502, 3), (503, 3), (504, 3), (500, 1), (501, 1), (400, 1), (404, 1), (409, 1)],
)
async def test_only_specified_statuses_are_retried(
    upstream: Upstream, make_manager: MakeManager, status: int, expected_hits: int
) -> None:
    async with make_manager(circuit_breaker=False) as api:
        result = await api.get(f"/status/{status}")
    assert upstream.hits[f"/v1/status/{status}"] == expected_hits
    assert result.attempts == expected_hits
    assert result.status_code == status
    assert result.error_type == ("rate_limited" if status == 429 else "http_error")


@pytest.mark.parametrize("verb", ["POST", "PATCH"])
async def test_non_idempotent_request_that_reached_upstream_is_not_retried(
    upstream: Upstream, make_manager: MakeManager, verb: str
) -> None:
    async with make_manager() as api:
        answered = await api.request(verb, "/status/503", data={"charge": 10})
        reset = await api.request(verb, "/reset", data={"charge": 10})
    assert upstream.hits["/v1/status/503"] == 1
    assert answered.attempts == 1
    assert upstream.hits["/v1/reset"] == 1
    assert reset.error_type == "connection_error"
    assert reset.attempts == 1


async def test_idempotent_methods_are_retried_after_reaching_upstream(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager(circuit_breaker=False) as api:
        put = await api.put("/status/503", {"x": 1})
        delete = await api.delete("/reset")
    assert put.attempts == 3
    assert delete.attempts == 3
    assert upstream.hits["/v1/status/503"] == 3
    # aiohttp itself repeats an idempotent request once when a reused
    # keep-alive connection turns out closed, so DELETE may be seen more often.
    assert upstream.hits["/v1/reset"] >= 3


async def test_post_with_idempotency_key_is_retried(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager() as api:
        result = await api.post("/flaky/2/pay", {"charge": 10}, headers={"Idempotency-Key": "k1"})
    assert result.success
    assert upstream.hits["/v1/flaky/2/pay"] == 3
    assert all(r["headers"]["Idempotency-Key"] == "k1" for r in upstream.requests)


async def test_post_is_retried_when_it_never_reached_upstream(make_manager: MakeManager) -> None:
    port = closed_port()
    async with make_manager(f"http://127.0.0.1:{port}/v1") as api:
        result = await api.post("/orders", {"item": 1})
    assert result.error_type == "connection_error"
    assert result.attempts == 3
    assert result.error == f"POST /v1/orders: cannot connect to http://127.0.0.1:{port}"


async def test_retry_after_is_honoured(
    upstream: Upstream, make_manager: MakeManager, sleep: RecordingSleep
) -> None:
    async with make_manager() as api:
        result = await api.get("/flaky/1/ra", params={"retry_after": "2"})
    assert result.success
    assert upstream.hits["/v1/flaky/1/ra"] == 2
    assert sleep.waits == [2.0]


async def test_retry_after_beyond_the_deadline_is_not_waited_for(
    upstream: Upstream, make_manager: MakeManager, sleep: RecordingSleep
) -> None:
    async with make_manager(timeout=5) as api:
        result = await api.get("/status/503", params={"retry_after": "30"})
    assert upstream.hits["/v1/status/503"] == 1
    assert sleep.waits == []
    assert result.retry_after == 30.0


async def test_hanging_upstream_times_out_within_timeout_retries_included(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager(timeout=1.0, sleep=asyncio.sleep) as api:
        started = time.monotonic()
        result = await api.get("/hang")
        elapsed = time.monotonic() - started
    assert result.error_type == "timeout"
    assert elapsed < 1.0 + 0.5
    assert upstream.hits["/v1/hang"] >= 1


async def test_caller_deadline_shorter_than_timeout_wins(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager(timeout=30) as api:
        started = time.monotonic()
        result = await api.request("GET", "/hang", deadline=Deadline(0.3))
    assert result.error_type == "timeout"
    assert time.monotonic() - started < 0.8


async def test_retry_budget_caps_attempts_under_a_failing_upstream(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    clock = FakeClock(100.0)  # frozen: the reserve does not refill during the test
    budget = RetryBudget(ratio=0.2, reserve=10, clock=clock)
    async with make_manager(circuit_breaker=False, retry_budget=budget) as api:
        for _ in range(50):  # the reserve is spent here: the budget engages
            await api.get("/status/503")
        before = upstream.total_hits
        requests = 200
        for _ in range(requests):
            await api.get("/status/503")
        attempts = upstream.total_hits - before
    assert attempts <= 1.2 * requests
    assert attempts > requests  # it still retries some
    assert budget.denied > 0


# -- circuit breaker ----------------------------------------------------------------------


async def test_breaker_opens_fails_fast_and_half_open_probes_close_it(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    clock = FakeClock(100.0)
    breaker = {"failure_threshold": 3, "recovery_timeout": 5, "half_open_max_calls": 2}
    async with make_manager(retry=False, circuit_breaker=breaker, clock=clock) as api:
        for _ in range(3):
            assert (await api.get("/toggle")).status_code == 503
        assert api.breaker_state() == "open"
        for _ in range(5):
            refused = await api.get("/toggle")
            assert refused.error_type == "circuit_open"
            assert refused.retry_after == pytest.approx(5.0)
        assert upstream.hits["/v1/toggle"] == 3  # nothing reached it while open
        with pytest.raises(CircuitOpenError):
            await api.ping()

        upstream.healthy = True
        clock.now += 5.0
        assert api.breaker_state() == "half_open"
        assert (await api.get("/toggle")).success
        assert api.breaker_state() == "half_open"  # one of two probes done
        assert (await api.get("/toggle")).success
        assert api.breaker_state() == "closed"
        assert upstream.hits["/v1/toggle"] == 5
        stats = api.get_stats()
    assert stats["circuit"]["times_opened"] == 1
    assert stats["circuit"]["rejected"] == 5
    assert stats["errors_by_type"]["circuit_open"] == 5


async def test_a_renamed_manager_names_itself_in_breaker_and_rate_limit_refusals(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    # orchestrator.add_api() registers a manager under another name: its
    # breaker's and rate limiter's messages (and the limit's key) follow it.
    breaker = {"failure_threshold": 1, "recovery_timeout": 60}
    async with make_manager(
        retry=False, circuit_breaker=breaker, rate_limit="2/minute", name="built-as"
    ) as api:
        async with AsyncOperationOrchestrator() as orch:
            orch.add_api("payments", api)
            assert (await api.get("/toggle")).status_code == 503
            refused = await api.get("/toggle")
            limited = await api.get("/toggle")
            orch.apis.pop("payments")  # closed by make_manager, not by the orchestrator
    assert refused.error_type == "circuit_open"
    assert (refused.error or "").startswith("payments:"), refused.error
    assert api.breaker is not None
    assert api.breaker.name == "payments"
    assert api.rate_limiter is not None
    assert api.rate_limiter.name == "payments"
    assert "built-as" not in repr(api.breaker) + repr(api.rate_limiter)
    assert limited.error_type in {"circuit_open", "rate_limited"}


async def test_failed_probe_reopens(upstream: Upstream, make_manager: MakeManager) -> None:
    clock = FakeClock(100.0)
    breaker = {"failure_threshold": 2, "recovery_timeout": 1}
    async with make_manager(retry=False, circuit_breaker=breaker, clock=clock) as api:
        await api.get("/toggle")
        await api.get("/toggle")
        clock.now += 1.0
        await api.get("/toggle")  # the probe fails
        assert api.breaker_state() == "open"
        assert (await api.get("/toggle")).error_type == "circuit_open"
    assert upstream.hits["/v1/toggle"] == 3


async def test_4xx_does_not_open_the_breaker(upstream: Upstream, make_manager: MakeManager) -> None:
    async with make_manager(retry=False, circuit_breaker={"failure_threshold": 2}) as api:
        for _ in range(5):
            await api.get("/status/404")
        assert api.breaker_state() == "closed"


# -- rate limit --------------------------------------------------------------------------------


async def test_rate_limit_refuses_without_touching_upstream(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager(rate_limit="3/minute") as api:
        results = [await api.get("/ok") for _ in range(5)]
    assert [r.success for r in results] == [True, True, True, False, False]
    assert results[3].error_type == "rate_limited"
    assert results[3].retry_after is not None
    assert 0 < results[3].retry_after <= 60
    assert results[3].attempts == 1
    assert upstream.hits["/v1/ok"] == 3


# -- SSRF ------------------------------------------------------------------------------------------


async def test_ssrf_corpus_is_refused_before_any_connection(
    upstream: Upstream, canary: Canary, make_manager: MakeManager
) -> None:
    from tests.unit.backends.test_urls import SSRF_CORPUS

    endpoints = [e.replace("127.0.0.2:8080", f"127.0.0.2:{canary.port}") for e in SSRF_CORPUS]
    async with make_manager() as api:
        for endpoint in endpoints:
            for method in ("GET", "POST"):
                result = await api.request(method, endpoint)
                assert result.error_type == "invalid_request", endpoint
        offsite = await api.get("/redirect/offsite")
    assert offsite.error_type == "http_error"
    assert offsite.status_code == 302
    assert "another origin" in (offsite.error or "")
    assert canary.connections == 0
    assert upstream.total_hits == 1  # only the redirecting endpoint itself


async def test_canary_counts_connections(canary: Canary) -> None:
    # Guards the SSRF test: the canary must be able to see a connection.
    _, writer = await asyncio.open_connection(canary.host, canary.port)
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(2):
        await canary.connected.wait()
    assert canary.connections == 1


async def test_same_origin_redirect_is_followed(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager() as api:
        result = await api.get("/redirect/local")
    assert result.success
    assert result.data["ok"] is True
    assert upstream.hits["/v1/ok"] == 1


# -- secrets, lifecycle, health, stats -----------------------------------------------------------


async def test_configured_header_values_never_reach_results_or_stats(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    headers = {"Authorization": f"Bearer {SECRET_TOKEN}", "X-Api-Key": SECRET_TOKEN}
    async with make_manager(headers=headers) as api:
        echoed = await api.get("/echo")
        failed = await api.get("/status/500")
        refused = await api.get("//evil")
        stats = api.get_stats()
    # The upstream did receive the credentials ...
    assert upstream.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET_TOKEN}"
    # ... but nothing we hand back shows them.
    for shown in (echoed.to_dict(), failed.to_dict(), refused.to_dict(), stats, repr(api)):
        assert SECRET_TOKEN not in str(shown)
    assert "***" in echoed.data["headers"]["Authorization"]


async def test_invalid_method_and_headers_are_invalid_requests(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager() as api:
        bad_method = await api.request("TRACE", "/ok")
        bad_header = await api.get("/ok", headers={"X-A": "b\r\nHost: 127.0.0.2"})
        host_header = await api.get("/ok", headers={"Host": "127.0.0.2"})
    for result in (bad_method, bad_header, host_header):
        assert result.error_type == "invalid_request"
    assert upstream.total_hits == 0


async def test_lifecycle_close_is_idempotent_and_final(make_manager: MakeManager) -> None:
    api = make_manager()
    assert (await api.get("/ok")).success  # opens on first use
    await api.close()
    await api.close()
    with pytest.raises(ClosedError):
        await api.initialize_session()
    after = await api.get("/ok")
    assert after.error_type == "closed"


async def test_ping(upstream: Upstream, make_manager: MakeManager) -> None:
    async with make_manager() as api:
        await api.ping(1.0)
    async with make_manager(f"http://127.0.0.1:{closed_port()}") as down:
        with pytest.raises(APIConnectionError):
            await down.ping(1.0)


async def test_one_event_per_request(make_manager: MakeManager) -> None:
    events: list[OperationEvent] = []

    def hook(event: object) -> None:
        if isinstance(event, OperationEvent):
            events.append(event)

    add_hook(hook)
    try:
        async with make_manager() as api:
            await api.get("/flaky/1/ev")
            await api.post("/status/400")
    finally:
        remove_hook(hook)
    assert [(e.kind, e.backend, e.operation, e.attempts, e.error_type) for e in events] == [
        ("api", "http", "GET", 2, None),
        ("api", "http", "POST", 1, "http_error"),
    ]


# -- orchestrator and seed helpers ---------------------------------------------------------------


async def test_orchestrator_api_operations(upstream: Upstream, sleep: RecordingSleep) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_api_manager("external_api", upstream.base_url, sleep=sleep)
        result = await orchestrator.execute_api_operation(
            "external_api", "GET", "/ok", params={"include": "profile"}
        )
        assert result.data["query"] == {"include": "profile"}
        async with get_api_session("external_api") as api:
            assert (await api.get("/ok")).success
        retried = await execute_with_retry(
            lambda: orchestrator.execute_api_operation("external_api", "GET", "/flaky/4/seed"),
            max_retries=3,
            delay=0.0,
        )
        assert retried.success  # 3 manager attempts, then 2 more after the helper's retry
        health = await orchestrator.health_check()
        assert health["external_api"]["status"] == "up"
        assert health["external_api"]["circuit"] == "closed"
        stats = orchestrator.get_stats()
        assert stats["apis"]["external_api"]["type"] == "http"
    assert upstream.hits["/v1/flaky/4/seed"] == 5


async def test_external_api_session_seed_shape(upstream: Upstream) -> None:
    async with ExternalAPISession(upstream.origin, timeout=5.0) as holder:
        async with holder.session.get("/v1/ok") as response:
            assert response.status == 200
            assert (await response.json())["ok"] is True
    with pytest.raises(ClosedError):
        _ = holder.session
