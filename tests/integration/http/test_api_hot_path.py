"""The API manager's per-request shortcuts, against the real local upstream.

Checked endpoints are remembered per manager, one timeout object serves
attempts under the manager's own deadline, response headers are copied
without redaction work when there is nothing to redact, and no event is
built without a hook. None of that may change what a request does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from iogate.backends.http import AsyncAPIManager
from iogate.core import events, recording
from iogate.core.deadline import Deadline

from .conftest import Canary, Upstream

MakeManager = Callable[..., AsyncAPIManager]


async def test_remembered_endpoints_still_go_where_they_say(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager() as api:
        for endpoint in ("/ok", "/text", "ok", "/ok", "/text?x=1", "/text"):
            result = await api.get(endpoint)
            assert result.success, (endpoint, result)
    assert upstream.hits["/v1/ok"] == 3
    assert upstream.hits["/v1/text"] == 3


async def test_a_refused_endpoint_is_refused_every_time(
    upstream: Upstream, canary: Canary, make_manager: MakeManager
) -> None:
    offsite = f"http://127.0.0.2:{canary.port}/v1/ok"
    async with make_manager() as api:
        for _ in range(3):
            for endpoint in (offsite, "/../../etc", "//127.0.0.2/x", "/%2e%2e/x"):
                result = await api.get(endpoint)
                assert result.error_type == "invalid_request", endpoint
        assert (await api.get("/ok")).success
    assert canary.connections == 0
    assert upstream.total_hits == 1


async def test_the_shared_timeout_still_bounds_a_hanging_upstream(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager(timeout=0.3, retry=False) as api:
        started = time.monotonic()
        result = await api.get("/hang")
        elapsed = time.monotonic() - started
        # A caller deadline shorter than the timeout gets its own timeout object.
        short = await api.request("GET", "/hang", deadline=Deadline(0.1))
    assert result.error_type == "timeout"
    assert 0.25 <= elapsed < 0.3 + 0.5
    assert short.error_type == "timeout"
    assert upstream.hits["/v1/hang"] == 2


async def test_response_headers_are_copied_whole_without_secrets(
    make_manager: MakeManager,
) -> None:
    async with make_manager() as api:
        result = await api.get("/text")
    assert result.headers is not None
    assert result.headers["Content-Type"].startswith("text/plain")
    assert result.headers["Content-Length"] == str(len("plain words"))


async def test_no_event_is_built_without_a_hook(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError(f"event built without a hook: {args!r}")

    monkeypatch.setattr(events, "hooks", ())
    monkeypatch.setattr(recording, "OperationEvent", refuse)
    async with make_manager() as api:
        ok = await api.get("/ok")
        failed = await api.get("/status/404")
        stats = api.get_stats()
    assert ok.success
    assert failed.error_type == "http_error"
    assert ok.duration_ms == round(ok.duration_ms, 3)
    assert (stats["count"], stats["errors_by_type"]) == (2, {"http_error": 1})
