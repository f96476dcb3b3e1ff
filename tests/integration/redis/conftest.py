"""Redis fixtures: the real server at IOGATE_TEST_REDIS_URL, never mocked.

``redis_url`` (tests/conftest.py) skips when nothing answers, or fails with
``IOGATE_REQUIRE_SERVICES=1``. ``LatencyProxy`` is a real TCP relay on
loopback between a manager and Redis that can delay replies (injected
latency), stall them, or drop every connection, so fault tests exercise the
real driver path.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from iogate.backends.redis import AsyncRedisManager


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses (the test database is shared)."""
    return f"iogate:test:{uuid.uuid4().hex[:10]}:"


@pytest.fixture(params=[True, False], ids=["auto_pipeline", "pooled"])
async def redis_manager(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[AsyncRedisManager]:
    manager = AsyncRedisManager(redis_url, name="redis_cache", auto_pipeline=request.param)
    await manager.initialize_pool()
    try:
        yield manager
    finally:
        await manager.close()


class LatencyProxy:
    """Relays 127.0.0.1:<port> to Redis; replies delayed by up to ``max_delay``."""

    def __init__(self, target_host: str, target_port: int, *, max_delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.max_delay = max_delay
        self.flowing = asyncio.Event()  # cleared: replies are held back
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._random = random.Random(7)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, redis_url: str) -> str:
        parts = urlsplit(redis_url)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, delay=False)),
            asyncio.create_task(self._pipe(up_reader, writer, delay=True)),
        ]
        self._tasks.update(tasks)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delay: bool
    ) -> None:
        while data := await reader.read(65536):
            if delay:
                if self.max_delay:
                    # Injected latency: the reply stream arrives late and in pieces.
                    await asyncio.sleep(self._random.uniform(0, self.max_delay))
                await self.flowing.wait()
                if len(data) > 8 and self._random.random() < 0.3:
                    cut = self._random.randrange(1, len(data))
                    writer.write(data[:cut])
                    await writer.drain()
                    await asyncio.sleep(0)
                    data = data[cut:]
            writer.write(data)
            await writer.drain()

    def drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[LatencyProxy]:
    parts = urlsplit(redis_url)
    relay = LatencyProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()
