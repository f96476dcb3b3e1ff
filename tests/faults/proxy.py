"""A TCP fault proxy for the fault-injection suite.

One relay on 127.0.0.1 in front of a real server, switchable at run time:

- ``open``: relay bytes both ways (optionally after ``latency`` seconds per
  chunk);
- ``blackhole``: new connections are accepted and never answered, live ones
  stop relaying (bytes are swallowed) -- a network partition;
- ``reset``: live connections are reset (RST) and new ones too;
- ``refuse``: the listening socket is closed (connection refused), live
  connections reset -- a stopped server;
- ``close_after(n)``: each connection relays ``n`` bytes from the server to
  the client, then both sides are closed -- a connection that dies in the
  middle of a reply.

Only loopback, bounded by the tests that use it; it never touches the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

MODES = ("open", "blackhole", "reset", "refuse", "close_after")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rst(writer: asyncio.StreamWriter) -> None:
    """Abort with SO_LINGER 0, so the peer sees a reset, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A switchable TCP relay; ``url(u)`` rewrites a server URL to go through it."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or _free_port()
        self.mode = "open"
        self.latency = 0.0
        self.close_after_bytes = 0
        self.accepted = 0  # connections accepted so far (tests count reconnects)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_url(cls, url: str, default_port: int) -> FaultProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or default_port)

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        prefix = f"{userinfo}@" if at else ""
        return urlunsplit(parts._replace(netloc=f"{prefix}127.0.0.1:{self.port}"))

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        return self

    # -- switches ---------------------------------------------------------

    async def set(self, mode: str, *, latency: float = 0.0, after: int = 0) -> None:
        """Switch mode. Existing connections are reset for blackhole/reset/refuse."""
        assert mode in MODES, mode
        self.mode = mode
        self.latency = latency
        self.close_after_bytes = after
        if mode in ("reset", "refuse"):
            self.reset_all()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if mode != "refuse" and self._server is None:
            await self.start()

    async def blackhole(self) -> None:
        """Partition: new and live connections stop getting any byte."""
        await self.set("blackhole")

    async def refuse(self) -> None:
        await self.set("refuse")

    async def reset(self) -> None:
        await self.set("reset")

    async def close_after(self, n: int) -> None:
        await self.set("close_after", after=n)

    async def slow(self, latency: float) -> None:
        await self.set("open", latency=latency)

    async def restore(self) -> None:
        """Relay again. Connections that were blackholed are reset (they never recover)."""
        if self.mode == "blackhole":
            self.reset_all()
        await self.set("open")

    def reset_all(self) -> None:
        for writer in list(self._writers):
            _rst(writer)

    async def wait_accepted(self, count: int = 1, within: float = 5.0) -> None:
        """Until ``count`` connections have been accepted (a client is connecting)."""
        deadline = asyncio.get_running_loop().time() + within
        while self.accepted < count:
            assert asyncio.get_running_loop().time() < deadline, f"{self.accepted} accepted"
            await asyncio.sleep(0.005)

    @property
    def live(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)
            self._server = None
        self.reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- relay ------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.accepted += 1
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if self.mode == "reset":
                _rst(writer)
                return
            if self.mode == "blackhole":
                while await reader.read(65536):
                    pass  # swallow until the client gives up or we are reset
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _rst(writer)
                return
            self._writers.add(up_writer)
            budget = [-1]  # bytes left to relay to the client in close_after mode
            pipes = [
                asyncio.create_task(self._pipe(reader, up_writer, None)),
                asyncio.create_task(self._pipe(up_reader, writer, budget)),
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

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        budget: list[int] | None,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.mode == "blackhole":
                    continue  # a partition: bytes go nowhere, nothing is closed
                if self.latency:
                    await asyncio.sleep(self.latency)
                if budget is not None and self.mode == "close_after":
                    if budget[0] < 0:  # switched on after this connection opened
                        budget[0] = self.close_after_bytes
                    if len(data) >= budget[0]:
                        writer.write(data[: budget[0]])
                        with contextlib.suppress(Exception):
                            await writer.drain()
                        _rst(writer)
                        return
                    budget[0] -= len(data)
                writer.write(data)
                await writer.drain()


@contextlib.asynccontextmanager
async def fault_proxy(url: str, default_port: int) -> AsyncIterator[FaultProxy]:
    """``async with fault_proxy(postgres_url, 5432) as proxy: proxy.url(postgres_url)``."""
    proxy = FaultProxy.for_url(url, default_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
