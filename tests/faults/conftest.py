"""Fixtures of the fault-injection suite: throwaway servers and fault proxies."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conftest import unavailable
from tests.faults.proxy import FaultProxy
from tests.faults.servers import ThrowawayPostgres, ThrowawayRedis, postgres_bindir


@pytest.fixture(scope="session")
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL cluster of this session's own. A test that stops it restarts it."""
    bindir = postgres_bindir()
    if bindir is None:
        unavailable("no PostgreSQL binaries for a throwaway cluster")
        return
    server = ThrowawayPostgres(bindir)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no redis-server binary for a throwaway server")
        return
    server = ThrowawayRedis(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


async def _proxy_for(url: str, default_port: int) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy.for_url(url, default_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def pg_fault(postgres_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the shared PostgreSQL; ``pg_fault.url(postgres_url)``."""
    async for proxy in _proxy_for(postgres_url, 5432):
        yield proxy


@pytest.fixture
async def redis_fault(redis_url: str) -> AsyncIterator[FaultProxy]:
    async for proxy in _proxy_for(redis_url, 6379):
        yield proxy


@pytest.fixture
async def mysql_fault(mysql_url: str) -> AsyncIterator[FaultProxy]:
    async for proxy in _proxy_for(mysql_url, 3306):
        yield proxy
