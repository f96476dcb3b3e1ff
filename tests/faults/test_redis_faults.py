"""Redis keeps its deadline on every path, with the server blackholed.

Both modes of the manager (auto-pipelined, and the redis.asyncio pool), each
path through a :class:`FaultProxy` that accepts connections and never answers:
the first connection of a cold manager (its ``SELECT`` for a database other
than 0, or its ``AUTH``), a reconnect after the connection was lost, a command
on a live connection, callers queued behind one dial, and calls with no
deadline at all (bounded by ``connect_timeout`` + ``command_timeout``). Each
call must end within its deadline + 0.5 s, as a failed Result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from iogate import Result
from iogate.backends.redis import AsyncRedisManager
from iogate.core.deadline import Deadline
from iogate.core.errors import DatabaseConnectionError, OperationTimeoutError
from tests.conftest import poll
from tests.faults.proxy import FaultProxy

DEADLINE = 2.0
SLACK = 0.5  # the bound: deadline + 0.5 s
GET = {"operation": "get", "key": "iogate-fault-k"}


def with_db(url: str, db: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f":{password}@{parts.hostname}:{parts.port}"))


@pytest.fixture
def nonzero_db_url(redis_url: str) -> str:
    """The test server's URL on a database other than 0, so connect sends SELECT."""
    db = urlsplit(redis_url).path.strip("/") or "0"
    return redis_url if db != "0" else with_db(redis_url, 15)


@pytest.fixture(params=[True, False], ids=["pipelined", "pooled"])
def auto_pipeline(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def managers() -> AsyncIterator[list[AsyncRedisManager]]:
    made: list[AsyncRedisManager] = []
    yield made
    await asyncio.gather(*(m.close() for m in made))


async def timed(call: asyncio.Future[Result] | object) -> tuple[float, Result]:
    started = time.monotonic()
    result = await call  # type: ignore[misc]
    return time.monotonic() - started, result


@pytest.mark.parametrize("handshake", ["select", "auth"])
async def test_cold_manager_keeps_the_deadline_through_its_handshake(
    redis_fault: FaultProxy,
    nonzero_db_url: str,
    auto_pipeline: bool,
    handshake: str,
    managers: list[AsyncRedisManager],
) -> None:
    """The first connection's SELECT (db != 0) or AUTH runs inside the caller's
    deadline (measured 5 s, the connect timeout, against a 2 s deadline)."""
    url = redis_fault.url(nonzero_db_url)
    if handshake == "auth":
        url = with_password(with_db(url, 0), "not-the-password")
    manager = AsyncRedisManager(url, auto_pipeline=auto_pipeline)
    managers.append(manager)
    await redis_fault.blackhole()
    took, result = await timed(manager.execute_query("k", GET, deadline=Deadline(DEADLINE)))
    print(f"cold {handshake} ({'pipelined' if auto_pipeline else 'pooled'}): {took:.2f}s")
    assert not result.success
    assert result.error_type in ("timeout", "connection_error"), result
    assert took < DEADLINE + SLACK


async def test_reconnect_keeps_the_deadline(
    redis_fault: FaultProxy,
    nonzero_db_url: str,
    auto_pipeline: bool,
    managers: list[AsyncRedisManager],
) -> None:
    """The connection is lost, then the server stops answering: the reconnect
    (connect + SELECT) is inside the deadline."""
    manager = AsyncRedisManager(redis_fault.url(nonzero_db_url), auto_pipeline=auto_pipeline)
    managers.append(manager)
    assert (await manager.execute_query("k", GET)).success
    await redis_fault.reset()
    await redis_fault.blackhole()
    # The loss is noticed by the first command (or at once, pipelined); the
    # following ones reconnect into the blackhole.
    for _ in range(3):
        took, result = await timed(manager.execute_query("k", GET, deadline=Deadline(DEADLINE)))
        assert not result.success
        assert took < DEADLINE + SLACK, f"{took:.2f}s: {result.error}"
    await redis_fault.restore()
    assert await poll(lambda: _ok(manager), timeout=DEADLINE + 1)


async def _ok(manager: AsyncRedisManager) -> bool:
    return (await manager.execute_query("k", GET, deadline=Deadline(1))).success


@pytest.mark.parametrize(
    "params",
    [GET, {"operation": "pipeline", "operations": [GET, GET]}],
    ids=["command", "pipeline"],
)
async def test_blackholed_command_keeps_the_deadline(
    redis_fault: FaultProxy,
    nonzero_db_url: str,
    auto_pipeline: bool,
    params: dict[str, object],
    managers: list[AsyncRedisManager],
) -> None:
    manager = AsyncRedisManager(redis_fault.url(nonzero_db_url), auto_pipeline=auto_pipeline)
    managers.append(manager)
    assert (await manager.execute_query("k", GET)).success
    await redis_fault.blackhole()
    took, result = await timed(manager.execute_query("k", params, deadline=Deadline(DEADLINE)))
    assert result.error_type == "timeout", result
    assert took < DEADLINE + SLACK


async def test_callers_waiting_on_one_dial_keep_their_own_deadlines(
    redis_fault: FaultProxy, nonzero_db_url: str, managers: list[AsyncRedisManager]
) -> None:
    """Callers queued behind a connection being made each leave at their own
    deadline, and share that one dial (no connection per caller)."""
    manager = AsyncRedisManager(redis_fault.url(nonzero_db_url))
    managers.append(manager)
    assert (await manager.execute_query("k", GET)).success
    await redis_fault.reset()
    await redis_fault.blackhole()
    assert await poll(lambda: manager.pool_details()["connections"] == 0)
    accepted = redis_fault.accepted
    deadlines = [0.5, 1.0, 1.5, 2.0]
    outcomes = await asyncio.gather(
        *(timed(manager.execute_query("k", GET, deadline=Deadline(d))) for d in deadlines)
    )
    for deadline, (took, result) in zip(deadlines, outcomes, strict=True):
        assert result.error_type == "timeout", result
        assert deadline - 0.05 < took < deadline + SLACK, (deadline, took)
    assert redis_fault.accepted - accepted == 1  # one dial for all four


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_no_deadline_is_bounded_by_the_configured_timeouts(
    redis_fault: FaultProxy,
    nonzero_db_url: str,
    auto_pipeline: bool,
    warm: bool,
    managers: list[AsyncRedisManager],
) -> None:
    """No deadline: connect_timeout bounds the connect and its handshake,
    command_timeout a connection that stops answering."""
    timeouts = {"connect_timeout": 1.0, "command_timeout": 1.0}
    manager = AsyncRedisManager(
        redis_fault.url(nonzero_db_url), auto_pipeline=auto_pipeline, **timeouts
    )
    managers.append(manager)
    if warm:
        assert (await manager.execute_query("k", GET)).success
    await redis_fault.blackhole()
    took, result = await timed(manager.execute_query("k", GET))
    assert not result.success
    assert result.error_type in ("timeout", "connection_error"), result
    assert took < sum(timeouts.values()) + SLACK


async def test_raw_command_keeps_the_deadline(
    redis_fault: FaultProxy,
    nonzero_db_url: str,
    auto_pipeline: bool,
    managers: list[AsyncRedisManager],
) -> None:
    """``execute_command`` (raises instead of returning a Result), cold."""
    manager = AsyncRedisManager(redis_fault.url(nonzero_db_url), auto_pipeline=auto_pipeline)
    managers.append(manager)
    await redis_fault.blackhole()
    started = time.monotonic()
    with pytest.raises((OperationTimeoutError, DatabaseConnectionError)):
        await manager.execute_command("GET", "k", deadline=Deadline(DEADLINE))
    assert time.monotonic() - started < DEADLINE + SLACK
