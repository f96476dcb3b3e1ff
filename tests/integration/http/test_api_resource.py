"""The API manager and the seed's session holder as resources: lifecycle, target, health.

Both inherit ``iogate.core.lifecycle.Lifecycle``; the manager satisfies the
``Resource`` protocol (mypy checks the assignment at the end of
``backends/http/manager.py``) and records every call through
``iogate.core.recording.record``.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable

import pytest

from iogate.backends.http import AsyncAPIManager, ExternalAPISession
from iogate.core import events
from iogate.core.errors import ClosedError
from iogate.core.events import OperationEvent
from iogate.core.resource import Health, Kind, ResourceState

from .conftest import Upstream

MakeManager = Callable[..., AsyncAPIManager]


async def test_the_manager_is_a_resource(upstream: Upstream, make_manager: MakeManager) -> None:
    api = make_manager(circuit_breaker={"failure_threshold": 2})
    assert (api.kind, api.backend, api.target) == (Kind.API, "http", upstream.base_url)
    assert api.health() == Health(ResourceState.UNOPENED, "closed")
    await api.open()
    assert api.state is ResourceState.OPEN
    assert api.health() == Health(ResourceState.OPEN, "closed")
    for _ in range(2):
        assert (await api.get("/status/500")).status_code == 500
    assert api.health().breaker == "open"
    assert api.breaker_state() == "open"  # the old name, for callers not yet moved
    await api.close()
    assert api.health() == Health(ResourceState.CLOSED, "open")


async def test_health_without_a_breaker_says_disabled(make_manager: MakeManager) -> None:
    api = make_manager(circuit_breaker=False)
    assert api.health().breaker == "disabled"


async def test_pool_stats_have_the_fixed_keys(make_manager: MakeManager) -> None:
    api = make_manager(max_connections=7)
    assert api.pool_stats() == {"size": 0, "max_size": 7, "in_use": 0, "idle": 0, "waiting": 0}
    assert api.get_stats()["pool"]["max_size"] == 7
    assert api.get_stats()["pool"]["max_connections"] == 7


async def test_a_closed_manager_cannot_reopen(make_manager: MakeManager) -> None:
    api = make_manager()
    async with api:
        assert (await api.get("/ok")).success
    await api.close()  # idempotent
    with pytest.raises(ClosedError, match="cannot be reopened"):
        await api.initialize_session()
    failed = await api.get("/ok")
    assert failed.error_type == "closed"


async def test_every_call_is_recorded_with_a_closed_set_label(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[OperationEvent] = []
    monkeypatch.setattr(events, "hooks", (seen.append,))
    async with make_manager(retry={"attempts": 2}) as api:
        await api.get("/ok")
        await api.request("BREW", "/ok")
        await api.get("/status/503")
    assert [(e.kind, e.backend, e.operation, e.attempts) for e in seen] == [
        ("api", "http", "GET", 1),
        ("api", "http", "invalid", 1),
        ("api", "http", "GET", 2),
    ]
    assert [e.error_type for e in seen] == [None, "invalid_request", "http_error"]
    assert api.get_stats()["count"] == 3


async def test_an_unclosed_manager_warns(upstream: Upstream) -> None:
    api = AsyncAPIManager(upstream.base_url, name="forgotten")
    await api.open()
    session = api._session
    assert session is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del api
        gc.collect()
    assert any(
        issubclass(w.category, ResourceWarning) and "'forgotten' was never closed" in str(w.message)
        for w in caught
    )
    await session.close()


async def test_the_seed_session_holder_has_the_same_lifecycle(upstream: Upstream) -> None:
    holder = ExternalAPISession(upstream.origin, timeout=5.0)
    with pytest.raises(ClosedError, match="not open"):
        _ = holder.session
    await holder.initialize()
    await holder.initialize()  # idempotent
    assert holder.state is ResourceState.OPEN
    async with holder.session.get("v1/ok") as response:
        assert response.status == 200
    await holder.aclose()
    await holder.aclose()
    assert holder.state is ResourceState.CLOSED
    with pytest.raises(ClosedError, match="cannot be reopened"):
        await holder.initialize()
