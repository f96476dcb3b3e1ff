"""Signals on a real ``iogate serve`` process: SIGHUP reloads, SIGTERM drains.

A reload validates the new config and opens its resources before the old
ones close; requests in flight finish on the old ones; a bad config is
refused with one log line and the old one keeps serving. SIGTERM lets
in-flight requests finish (within ``gateway.shutdown_timeout``), refuses
new connections, and exits 0.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

ONE = "key-one-" + "a" * 16
TWO = "key-two-" + "b" * 16
STARTUP_SECONDS = 60
WORKERS_SECONDS = 120  # worker processes start and stop one at a time


def key_toml(name: str, key: str) -> str:
    return (
        f'[[gateway.api_keys]]\nname = "{name}"\nkey = "{key}"\nscopes = ["db:*:admin", "batch"]\n'
    )


def pg_toml(url: str) -> str:
    return f'[databases.pg]\ntype = "postgresql"\nurl = "{url}"\nstatement_timeout = 30\n'


LITE = '[databases.lite]\ntype = "sqlite"\npath = "lite.db"\n'


class Served:
    """``iogate serve --config`` in ``workdir``, its output in a log file."""

    def __init__(self, workdir: Path, body: str, *args: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "iogate.toml"
        self.write(body)
        self.log = workdir / "serve.log"
        self.base = f"http://127.0.0.1:{self.port}"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [*_IOGATE, "serve", "--config", str(self.config), *args],
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway did not start:\n" + self.output()
            time.sleep(0.05)  # polling another process: nothing to await

    def write(self, body: str) -> None:
        header = f'[gateway]\nhost = "127.0.0.1"\nport = {self.port}\nrequest_timeout = 30\n'
        self.config.write_text(header + body, encoding="utf-8")

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_for_log(self, text: str, *, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.output().count(text) < count:
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n" + self.output()
            time.sleep(0.05)  # polling another process's log

    def sql(self, db: str, query: str, key: str, *, timeout: float = 30) -> httpx.Response:
        return httpx.post(
            f"{self.base}/database/execute",
            json={"db_name": db, "query": query},
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


_IOGATE = [sys.executable, "-m", "iogate.cli"]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(body: str, *args: str) -> Served:
        served = Served(tmp_path, body, *args)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def in_background(call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return future


def wait_until_running(served: Served, postgres_url: str, marker: str) -> None:
    """Until the gateway's statement carrying ``marker`` runs on PostgreSQL."""
    import asyncio

    import asyncpg

    async def running() -> bool:
        conn = await asyncpg.connect(postgres_url, timeout=10)
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND pid <> "
                "pg_backend_pid()",
                f"%{marker}%",
            )
            return bool(found)
        finally:
            await conn.close()

    deadline = time.monotonic() + 10
    while not asyncio.run(running()):
        assert time.monotonic() < deadline, "the slow statement never started"
        time.sleep(0.02)  # polling another process's work


def test_sighup_adds_a_database_and_changes_a_key(
    serve: Callable[..., Served], postgres_url: str
) -> None:
    served = serve(key_toml("one", ONE) + pg_toml(postgres_url))
    assert served.sql("pg", "SELECT 1 AS one", ONE).status_code == 200
    assert served.sql("lite", "SELECT 1 AS one", ONE).status_code == 404

    served.write(key_toml("two", TWO) + pg_toml(postgres_url) + LITE)
    served.signal(signal.SIGHUP)
    served.wait_for_log("config reloaded")

    assert served.sql("pg", "SELECT 1 AS one", ONE).status_code == 401
    lite = served.sql("lite", "SELECT 2 AS two", TWO)
    assert lite.status_code == 200, lite.text
    assert lite.json()["data"] == [{"two": 2}]
    assert served.sql("pg", "SELECT 3 AS three", TWO).json()["data"] == [{"three": 3}]
    assert served.process.poll() is None


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        pytest.param(
            '[apis.crm]\nbase_url = "https://crm.example.com"\nrate_limit = "fifty per sec"\n',
            "apis.crm.rate_limit",
            id="invalid_value",
        ),
        pytest.param("[databases.pg\n", "invalid TOML", id="not_toml"),
        pytest.param(
            '[databases.pg]\ntype = "postgresql"\nurl = "postgres:/127.0.0.1/db"\n',
            "databases.pg",
            id="mangled_url",
        ),
    ],
)
def test_a_bad_reload_is_refused_and_the_old_config_serves(
    serve: Callable[..., Served], postgres_url: str, bad: str, named: str
) -> None:
    served = serve(key_toml("one", ONE) + pg_toml(postgres_url))
    served.write(key_toml("two", TWO) + bad)
    served.signal(signal.SIGHUP)
    served.wait_for_log("config reload refused")

    refusals = [line for line in served.output().splitlines() if "reload refused" in line]
    assert len(refusals) == 1, served.output()
    assert named in refusals[0]
    assert "still serving the previous config" in refusals[0]
    assert "Traceback" not in served.output()
    assert served.process.poll() is None
    assert served.sql("pg", "SELECT 1 AS one", ONE).json()["data"] == [{"one": 1}]
    assert served.sql("pg", "SELECT 1 AS one", TWO).status_code == 401


def test_a_request_in_flight_during_reload_finishes_on_the_old_resources(
    serve: Callable[..., Served], postgres_url: str
) -> None:
    """The new config drops the database the slow request is using: the
    request still completes, because the old pool closes only after it."""
    served = serve(key_toml("one", ONE) + pg_toml(postgres_url))
    marker = f"inflight_{os.getpid()}_{time.monotonic_ns()}"
    slow = in_background(
        lambda: served.sql("pg", f"SELECT pg_sleep(1) AS {marker}, 7 AS seven", ONE)
    )
    wait_until_running(served, postgres_url, marker)

    served.write(key_toml("one", ONE) + LITE)
    served.signal(signal.SIGHUP)

    response = slow.result(timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["seven"] == 7
    served.wait_for_log("config reloaded")
    assert "1 request(s) finishing on the previous one" in served.output()
    assert served.sql("pg", "SELECT 1", ONE).status_code == 404  # gone in the new config
    assert served.sql("lite", "SELECT 1 AS one", ONE).status_code == 200


def test_sigterm_drains_in_flight_requests_and_exits_zero(
    serve: Callable[..., Served], postgres_url: str
) -> None:
    served = serve(key_toml("one", ONE) + pg_toml(postgres_url))
    marker = f"drain_{os.getpid()}_{time.monotonic_ns()}"
    slow = in_background(
        lambda: served.sql("pg", f"SELECT pg_sleep(1) AS {marker}, 7 AS seven", ONE)
    )
    wait_until_running(served, postgres_url, marker)
    served.signal(signal.SIGTERM)

    # New connections are refused while the slow request finishes.
    deadline = time.monotonic() + 1.0
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            httpx.get(f"{served.base}/health", timeout=0.5)
        except httpx.ConnectError:
            refused = True
        time.sleep(0.02)  # polling another process
    assert refused, "the gateway still accepted connections after SIGTERM"
    response = slow.result(timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["seven"] == 7
    assert served.process.wait(timeout=15) == 0, served.output()


def test_sigterm_drain_is_bounded_by_shutdown_timeout(
    serve: Callable[..., Served], postgres_url: str
) -> None:
    """A request that outlives gateway.shutdown_timeout is cut, and the
    process still exits 0 at the bound, not when the request would end."""
    body = key_toml("one", ONE) + pg_toml(postgres_url)
    served = serve(
        body.replace("[[gateway.api_keys]]", "shutdown_timeout = 1\n[[gateway.api_keys]]")
    )
    marker = f"stuck_{os.getpid()}_{time.monotonic_ns()}"
    slow = in_background(lambda: served.sql("pg", f"SELECT pg_sleep(20) AS {marker}", ONE))
    wait_until_running(served, postgres_url, marker)

    started = time.monotonic()
    served.signal(signal.SIGTERM)
    code = served.process.wait(timeout=20)
    elapsed = time.monotonic() - started
    assert code == 0, served.output()
    assert elapsed < 5, elapsed  # 1 s of drain, then the lifespan shutdown
    try:
        cut = slow.result(timeout=10)
    except httpx.TransportError:
        return  # closed with the process
    assert cut.status_code == 500, cut.text  # uvicorn's answer for a cancelled request


@pytest.mark.timeout(420)  # two rolling restarts of two workers: minutes on a loaded machine
def test_workers_reload_on_sighup_and_refuse_a_bad_config(serve: Callable[..., Served]) -> None:
    """With --workers, uvicorn's supervisor replaces each worker on SIGHUP;
    iogate validates the config first, so a bad one replaces nothing.

    Slow on a loaded machine: each replacement imports the gateway afresh,
    and the supervisor handles a signal only between its liveness pings."""
    served = serve(key_toml("one", ONE) + LITE, "--workers", "2")
    assert served.sql("lite", "SELECT 1 AS one", ONE).status_code == 200

    served.write(key_toml("one", ONE) + "[databases.lite\n")
    served.signal(signal.SIGHUP)
    served.wait_for_log("config reload refused", timeout=WORKERS_SECONDS)
    assert "the workers keep the previous config" in served.output()
    for _ in range(6):  # whichever worker answers
        assert served.sql("lite", "SELECT 1 AS one", ONE).status_code == 200

    served.write(key_toml("two", TWO) + LITE)
    served.signal(signal.SIGHUP)
    served.wait_for_log("replacing the workers one by one", timeout=WORKERS_SECONDS)
    deadline = time.monotonic() + WORKERS_SECONDS
    while served.sql("lite", "SELECT 1", ONE).status_code != 401:
        assert time.monotonic() < deadline, served.output()
        time.sleep(0.1)  # polling the workers being replaced
    # Both replaced: the old key is refused by every worker, the new one works.
    deadline = time.monotonic() + WORKERS_SECONDS
    while served.output().count("Terminated child process") < 2:
        assert time.monotonic() < deadline, served.output()
        time.sleep(0.1)
    for _ in range(6):
        assert served.sql("lite", "SELECT 1", ONE).status_code == 401
        assert served.sql("lite", "SELECT 1 AS one", TWO).status_code == 200
    served.signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0, served.output()


@pytest.mark.timeout(420)  # a worker replaced after a crash: minutes on a loaded machine
def test_a_worker_restarted_after_a_crash_keeps_the_validated_config(
    serve: Callable[..., Served],
) -> None:
    """A worker replaced by the supervisor (it died) reads the config the
    parent last validated, not a file edited since: before, the replacement
    read a broken file, failed to start, and uvicorn stopped the gateway."""
    served = serve(key_toml("one", ONE) + LITE, "--workers", "2")
    deadline = time.monotonic() + WORKERS_SECONDS
    while len(_worker_pids(served)) < 2:  # both workers up before one is killed
        assert time.monotonic() < deadline, served.output()
        time.sleep(0.1)
    victim = _worker_pids(served)[0]

    served.write(key_toml("two", TWO) + "[databases.lite\n")  # edited, broken, no SIGHUP
    os.kill(victim, signal.SIGKILL)
    served.wait_for_log(f"Child process [{victim}] died", timeout=WORKERS_SECONDS)
    deadline = time.monotonic() + WORKERS_SECONDS
    while len(_worker_pids(served)) < 3:  # the replacement has started serving
        assert time.monotonic() < deadline, served.output()
        time.sleep(0.1)
    assert "invalid TOML" not in served.output()
    for _ in range(6):  # whichever worker answers: the validated config, key one
        assert served.sql("lite", "SELECT 1 AS one", ONE).status_code == 200
    assert served.process.poll() is None
    served.signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0, served.output()


def _worker_pids(served: Served) -> list[int]:
    """Workers that finished start-up, in order, from uvicorn's log lines."""
    pids = []
    for line in served.output().splitlines():
        if "Started server process [" in line:
            pid = int(line.split("Started server process [", 1)[1].split("]", 1)[0])
            pids.append(pid)
    return pids
