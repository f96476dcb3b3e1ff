"""A real ``iogate serve`` keeps its memory while answering huge results.

``max_rows`` and ``max_result_bytes`` bound what the gateway reads, not only
what it answers: a 1.5 M-row result and a 150 MB value (PostgreSQL), asked
for with an admin key (trusted SQL) and a read key (guarded SQL), must each
leave the gateway process's peak RSS within 50 MB of where it was. The peak
is the kernel's (VmHWM in /proc/PID/status), reset before each request, so
a spike that is freed again before the answer still counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.postgres

ADMIN = "admin-key-" + uuid.uuid4().hex
READER = "reader-key-" + uuid.uuid4().hex
MAX_GROWTH_MB = 50
KEYS = pytest.mark.parametrize("key", [ADMIN, READER], ids=["admin", "reader"])


class Gateway:
    def __init__(self, base: str, pid: int) -> None:
        self.base = base
        self.pid = pid

    def sql(self, query: str, *, key: str) -> httpx.Response:
        return httpx.post(
            f"{self.base}/database/execute",
            json={"db_name": "pg", "query": query},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )

    def status_mb(self, field: str) -> float:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} for process {self.pid}")

    def reset_peak(self) -> float:
        """Make the process's peak RSS its current RSS, and return that."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as clear:
                clear.write("5")
        except OSError:
            pytest.skip(f"cannot reset the peak RSS of process {self.pid}")
        return self.status_mb("VmRSS")

    def peak_growth_mb(self, query: str, *, key: str) -> tuple[httpx.Response, float]:
        before = self.reset_peak()
        response = self.sql(query, key=key)
        return response, self.status_mb("VmHWM") - before


@pytest.fixture(scope="module")
def gateway(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("memory-gateway")
    port = free_port()
    config = workdir / "iogate.toml"
    # max_rows and max_result_bytes keep their defaults (1000, 16 MiB).
    config.write_text(
        f"""
[gateway]
host = "127.0.0.1"
port = {port}
request_timeout = 60

[[gateway.api_keys]]
name = "admin"
key = "${{ADMIN_KEY}}"
scopes = ["db:pg:admin"]

[[gateway.api_keys]]
name = "reader"
key = "${{READER_KEY}}"
scopes = ["db:pg:read"]

[databases.pg]
type = "postgresql"
url = "{postgres_url}"
max_connections = 2
statement_timeout = 30
""",
        encoding="utf-8",
    )
    log = workdir / "gateway.log"
    env = {**os.environ, "ADMIN_KEY": ADMIN, "READER_KEY": READER}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "iogate.cli", "serve", "--config", str(config)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.1)  # polling a subprocess: nothing to await
        gateway = Gateway(base, process.pid)
        for key in (ADMIN, READER):  # first requests: imports, pools, caches
            assert gateway.sql("SELECT 1 AS one", key=key).status_code == 200
        yield gateway
    finally:
        process.terminate()
        process.wait(timeout=20)


def body(response: httpx.Response) -> Any:
    return response.json()


@KEYS
def test_a_million_and_a_half_rows(gateway: Gateway, key: str) -> None:
    response, growth = gateway.peak_growth_mb("SELECT generate_series(1, 1500000) AS n", key=key)
    assert response.status_code == 200, response.text
    answer = body(response)
    assert answer["truncated"] is True
    assert len(answer["data"]) == 1000
    assert growth < MAX_GROWTH_MB, f"gateway peak RSS grew {growth:.0f} MB"


@KEYS
def test_a_150_mb_value(gateway: Gateway, key: str) -> None:
    response, growth = gateway.peak_growth_mb("SELECT repeat('x', 150000000) AS v", key=key)
    assert growth < MAX_GROWTH_MB, f"gateway peak RSS grew {growth:.0f} MB"
    answer = body(response)
    assert answer["error_type"] == "result_too_large", response.text
    assert "max_result_bytes" in answer["error"]
    assert response.status_code == 422, response.status_code  # client input: never a 5xx
    again = gateway.sql("SELECT 1 AS one", key=key)
    assert body(again)["data"] == [{"one": 1}]


@KEYS
def test_many_rows_below_the_row_cap_but_over_the_bytes(gateway: Gateway, key: str) -> None:
    """1,000 rows of 20 kB: within max_rows, 20 MB in all: refused by its size."""
    response, growth = gateway.peak_growth_mb(
        "SELECT repeat('x', 20000) AS s FROM generate_series(1, 1000)", key=key
    )
    assert growth < MAX_GROWTH_MB, f"gateway peak RSS grew {growth:.0f} MB"
    assert body(response)["error_type"] == "result_too_large", response.text
    assert response.status_code == 422, response.status_code
