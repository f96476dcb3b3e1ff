"""Slow clients against ``iogate serve`` as a real process.

Headers or a body trickled a byte a second, a connection that never speaks
and one left idle after its answer are all closed by the server within their
deadline ([gateway] header_timeout, body_timeout, keep_alive_timeout) plus a
small margin, while a normal client's requests keep their latency. The
tricklers sleep between bytes on purpose: a slow pace is what is tested.
Everything else polls with a deadline.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
KEEP_ALIVE_TIMEOUT = 1.0
# Scheduling slack on a busy two-core machine; the deadlines themselves are
# measured from the server's side of the connection.
MARGIN = 1.0
QUERY = b'{"db_name": "main", "query": "SELECT 1 AS one", "params": []}'


@dataclass
class Server:
    host: str
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("slow-clients")
    port = free_port()
    config = workdir / "iogate.toml"
    config.write_text(
        f"""
[gateway]
host = "127.0.0.1"
port = {port}
header_timeout = {HEADER_TIMEOUT}
body_timeout = {BODY_TIMEOUT}
keep_alive_timeout = {KEEP_ALIVE_TIMEOUT}

[databases.main]
type = "sqlite"
path = "slow.db"
""",
        encoding="utf-8",
    )
    log = workdir / "gateway.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "iogate.cli", "serve", "--config", str(config)],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Server("127.0.0.1", port, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{served.base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.1)  # polling a subprocess: nothing to await
        yield served
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert "Exception in ASGI application" not in log.read_text()


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    """Everything the server sends until it closes (or ``limit`` seconds pass)."""
    received = bytearray()
    async with asyncio.timeout(limit):
        while True:
            try:
                chunk = await reader.read(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return bytes(received)


async def _trickle(
    server: Server, head: bytes, payload: bytes, limit: float
) -> tuple[float, bytes]:
    """Send ``head`` at once, then ``payload`` a byte a second; (seconds to close, reply)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    started = time.monotonic()
    if head:
        writer.write(head)
        await writer.drain()

    async def drip() -> None:
        for byte in payload:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                return
            await asyncio.sleep(1.0)  # the pace under test

    dripping = asyncio.create_task(drip())
    try:
        reply = await _until_closed(reader, limit)
        return time.monotonic() - started, reply
    finally:
        dripping.cancel()
        writer.close()


async def _timings(client: httpx.AsyncClient, server: Server, count: int) -> list[float]:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.post(
            f"{server.base}/database/execute",
            content=QUERY,
            headers={"content-type": "application/json"},
        )
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return timings


async def test_trickled_headers_and_a_silent_connection_are_closed_in_time(
    server: Server,
) -> None:
    request_line = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 64
    limit = HEADER_TIMEOUT + MARGIN + 5
    async with httpx.AsyncClient(timeout=5) as client:
        before = statistics.median(await _timings(client, server, 40))
        slow = [asyncio.create_task(_trickle(server, b"", request_line, limit)) for _ in range(3)]
        silent = asyncio.create_task(_trickle(server, b"", b"", limit))
        during_timings: list[float] = []
        # A bounded loop of normal requests while the slow ones hang on.
        for _ in range(200):
            if all(task.done() for task in [*slow, silent]):
                break
            during_timings += await _timings(client, server, 5)
        outcomes = [await task for task in slow]
        silent_seconds, silent_reply = await silent
        after = statistics.median(await _timings(client, server, 20))

    for seconds, reply in outcomes:
        assert HEADER_TIMEOUT - 0.1 <= seconds <= HEADER_TIMEOUT + MARGIN, seconds
        assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert HEADER_TIMEOUT - 0.1 <= silent_seconds <= HEADER_TIMEOUT + MARGIN, silent_seconds
    assert silent_reply == b""  # nothing was asked, nothing is answered
    assert during_timings, "the slow connections closed before any request was measured"
    during = statistics.median(during_timings)
    # Same order of magnitude as before: the slow sockets cost the loop nothing.
    assert during <= before * 3 + 0.02, (before, during)
    assert after <= before * 3 + 0.02, (before, after)


async def test_a_trickled_body_is_cut_after_body_timeout(server: Server) -> None:
    head = (
        b"POST /database/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(QUERY)).encode() + b"\r\n\r\n"
    )
    seconds, reply = await _trickle(server, head, QUERY, BODY_TIMEOUT + MARGIN + 5)
    assert BODY_TIMEOUT - 0.1 <= seconds <= BODY_TIMEOUT + MARGIN, seconds
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    # The handler that waited for the body is gone; the gateway still answers.
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{server.base}/health")).status_code == 200


async def test_a_body_that_stops_coming_is_cut_after_body_timeout(server: Server) -> None:
    head = (
        b"POST /database/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    seconds, reply = await _trickle(server, head, b"", BODY_TIMEOUT + MARGIN + 5)
    assert BODY_TIMEOUT - 0.1 <= seconds <= BODY_TIMEOUT + MARGIN, seconds
    assert reply.startswith(b"HTTP/1.1 408 "), reply


async def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_timeout(
    server: Server,
) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        answered = time.monotonic()
        rest = await _until_closed(reader, KEEP_ALIVE_TIMEOUT + MARGIN + 5)
        idle = time.monotonic() - answered
    finally:
        writer.close()
    assert rest == b""
    assert KEEP_ALIVE_TIMEOUT - 0.1 <= idle <= KEEP_ALIVE_TIMEOUT + MARGIN, idle


async def test_a_request_split_across_reads_within_the_deadlines_is_served(
    server: Server,
) -> None:
    # The deadlines bound whole phases; a client that is merely not instant
    # (headers and body in several packets, within the limits) is served.
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        parts = [
            b"POST /database/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(QUERY)).encode()
            + b"\r\n\r\n",
            QUERY[:10],
            QUERY[10:],
        ]
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.3)  # a pace well inside the deadlines
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
        # A second request on the same connection is served too.
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        later = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"HTTP/1.1 200 " in later
    finally:
        writer.close()


def test_serve_help_still_names_host_port_and_workers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iogate.cli", "serve", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for option in ("--host", "--port", "--workers", "--config", "--log-level"):
        assert option in result.stdout
    assert "header_timeout" in result.stdout
