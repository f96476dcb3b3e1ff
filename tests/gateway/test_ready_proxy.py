"""``/ready`` follows the resources, ``/health`` does not: a real gateway
process whose PostgreSQL and Redis are reached through TCP relays this test
can cut (refusing connections, or swallowing them), then restore.

The shared servers are never touched: only the relays in front of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import free_port, poll

READY_WITHIN = 2.0  # the bound, from cut to the first 503
RECOVER_WITHIN = 10.0


class CuttableProxy:
    """A TCP relay on 127.0.0.1 that can be cut and restored.

    ``cut("refuse")`` is a stopped server: live connections are reset and new
    ones refused. ``cut("blackhole")`` is a partition: live connections are
    reset and new ones accepted but never answered. ``restore()`` relays again
    on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "open"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")
        userinfo = f"{netloc[0]}@" if netloc[1] else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.mode = "open"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if self.mode == "blackhole":
                await reader.read()  # hold it silently until the client or cut() ends it
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._writers.add(up_writer)
            pipes = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def cut(self, mode: str) -> None:
        assert mode in ("refuse", "blackhole")
        self.mode = mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._reset_all()

    async def restore(self) -> None:
        self._reset_all()  # blackholed connections never recover; their clients retry
        if self._server is None:
            await self.start()
        self.mode = "open"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def pg_proxy(postgres_url: str) -> AsyncIterator[CuttableProxy]:
    parts = urlsplit(postgres_url)
    proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[CuttableProxy]:
    parts = urlsplit(redis_url)
    proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@contextlib.asynccontextmanager
async def serve_gateway(config_text: str, workdir: Path) -> AsyncIterator[str]:
    """``iogate serve`` as a real process; yields its base URL once /health answers."""
    port = free_port()
    config = workdir / "iogate.toml"
    config.write_text(f"[gateway]\nport = {port}\n{config_text}")
    log_path = workdir / "gateway.log"
    log = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "iogate.cli",
        "serve",
        "--config",
        str(config),
        cwd=workdir,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2.0) as client:
            deadline = time.monotonic() + 30
            while True:
                if process.returncode is not None:
                    pytest.fail(f"gateway exited: {log_path.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"gateway did not start: {log_path.read_text()}")
                await asyncio.sleep(0.05)
        yield base
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


@pytest.fixture
async def gateway(
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
    pg_proxy: CuttableProxy,
    redis_proxy: CuttableProxy,
) -> AsyncIterator[str]:
    """A gateway whose PostgreSQL and Redis are behind the relays."""
    config = f"""
[databases.pg]
type = "postgresql"
url = "{pg_proxy.url(postgres_url)}"
acquire_timeout = 1

[databases.cache]
type = "redis"
url = "{redis_proxy.url(redis_url)}"

[databases.main]
type = "sqlite"
path = "{tmp_path / "main.db"}"
"""
    async with serve_gateway(config, tmp_path) as base:
        yield base


class HealthWatch:
    """Polls /health the whole time; every answer must be a fast 200."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.answers = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                response = await self.client.get("/health", timeout=0.5)
                if response.status_code != 200:
                    self.failures.append(f"status {response.status_code}")
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.answers += 1
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def ready_until(
    client: httpx.AsyncClient, status: int, within: float
) -> tuple[float, dict[str, Any]]:
    """Poll /ready until it answers ``status``; seconds taken and the last body."""
    started = time.monotonic()
    body: dict[str, Any] = {}
    while True:
        response = await client.get("/ready", timeout=5.0)
        body = response.json()
        elapsed = time.monotonic() - started
        if response.status_code == status:
            return elapsed, body
        if elapsed > within:
            pytest.fail(f"/ready still {response.status_code} after {elapsed:.2f}s: {body}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("resource", ["pg", "cache"])
async def test_ready_follows_a_cut_resource_and_health_stays_up(
    gateway: str, pg_proxy: CuttableProxy, redis_proxy: CuttableProxy, resource: str
) -> None:
    proxy = pg_proxy if resource == "pg" else redis_proxy
    async with httpx.AsyncClient(base_url=gateway) as client:
        watch = HealthWatch(client)
        watch.start()
        try:
            for mode in ("refuse", "blackhole"):
                _, body = await ready_until(client, 200, RECOVER_WITHIN)
                assert body["down"] == []

                await proxy.cut(mode)
                to_down, body = await ready_until(client, 503, READY_WITHIN)
                assert body["status"] == "not_ready"
                assert body["down"] == [resource]
                assert body["resources"][resource]["status"] == "down"
                assert body["resources"]["main"]["status"] == "up"
                # A steady outage, not a flap: /ready stays 503 while /health,
                # polled all along, keeps answering 200.
                wanted = watch.answers + 3
                for _ in range(3):
                    response = await client.get("/ready", timeout=5.0)
                    assert response.status_code == 503
                    assert response.json()["down"] == [resource]
                assert await poll(lambda w=wanted: watch.answers >= w, timeout=5.0)

                await proxy.restore()
                to_up, body = await ready_until(client, 200, RECOVER_WITHIN)
                assert body["down"] == []
                print(f"{resource}/{mode}: 503 after {to_down:.2f}s, 200 again after {to_up:.2f}s")
        finally:
            await watch.stop()
    assert watch.failures == []
    assert watch.slowest < 0.5
