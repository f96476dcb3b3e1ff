"""A real ``iogate serve`` process for the fault-injection suite.

Started with a config file in a temporary directory, spoken to over HTTP;
its process id gives what the soak samples (RSS, open file descriptors,
threads) from ``/proc``. Stopped with SIGTERM (SIGKILL if it hangs).
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

import httpx
import pytest

from tests.conftest import free_port

STARTUP_SECONDS = 30.0


class GatewayProcess:
    def __init__(self, workdir: Path, config: str, *, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "iogate.toml"
        self.config.write_text(f"[gateway]\nport = {self.port}\n{config}", encoding="utf-8")
        self.log = workdir / "gateway.log"
        self.env = env or {}
        self.process: asyncio.subprocess.Process | None = None
        self.startup_s = 0.0  # spawn to the first /health 200

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> GatewayProcess:
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "iogate.cli",
                "serve",
                "--config",
                str(self.config),
                cwd=self.workdir,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            )
        async with httpx.AsyncClient(base_url=self.base, timeout=1.0) as client:
            while True:
                if self.process.returncode is not None:
                    pytest.fail(f"gateway exited: {self.log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        break
                if time.monotonic() - started > STARTUP_SECONDS:
                    pytest.fail(f"gateway did not start: {self.log.read_text()}")
                await asyncio.sleep(0.02)
        self.startup_s = time.monotonic() - started
        return self

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()

    # -- what the soak samples ------------------------------------------------------

    def rss_kib(self) -> int:
        return _status_field(self.pid, "VmRSS")

    def threads(self) -> int:
        return _status_field(self.pid, "Threads")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise LookupError(name)


@contextlib.asynccontextmanager
async def running_gateway(
    workdir: Path, config: str, *, env: dict[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    gateway = GatewayProcess(workdir, config, env=env)
    try:
        yield await gateway.start()
    finally:
        await gateway.stop()
