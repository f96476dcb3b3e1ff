"""``iogate serve`` + ``iogate worker`` processes on a real broker and a
PostgreSQL job store: a job runs every operation, and a worker and the
gateway SIGKILLed in the middle of the job lose nothing and duplicate no
write."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.brokers import AMQP_URL, NATS_URL, drop_queue
from tests.conftest import port_open, unavailable
from tests.gateway.test_reload import Served, serve  # noqa: F401 (the fixture)

IOGATE = [sys.executable, "-m", "iogate.cli"]
INSERTS = 1500
CONCURRENCY = 10
WORKER_CHUNKS = 2


def broker_url(kind: str) -> str:
    url, port = (NATS_URL, 4222) if kind == "nats" else (AMQP_URL, 5672)
    if not port_open(url, port):
        unavailable(f"no {kind} broker at {url}")
    return url


class Workers:
    def __init__(self, workdir: Path, config: Path) -> None:
        self.workdir = workdir
        self.config = config
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.workdir / f"worker{len(self.processes)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [*IOGATE, "worker", "--config", str(self.config)],
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append((process, log))
        return process

    def output(self) -> str:
        return "\n".join(log.read_text(errors="replace") for _, log in self.processes)

    def stop(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.terminate()
        for process, _ in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[Path], Workers]]:
    made: list[Workers] = []

    def make(config: Path) -> Workers:
        made.append(Workers(tmp_path, config))
        return made[-1]

    yield make
    for group in made:
        group.stop()


def operations(table: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "database",
            "db_name": "pg",
            # a few ms each, so that a worker is killed with chunks in flight
            "query": f"INSERT INTO {table} (v) SELECT $1 FROM pg_sleep(0.002)",
            "params": [i],
        }
        for i in range(INSERTS)
    ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["nats", "amqp"])
def test_killed_worker_and_gateway_lose_nothing_and_duplicate_no_write(
    kind: str,
    tmp_path: Path,
    postgres_url: str,
    serve: Callable[..., Served],  # noqa: F811
    workers: Callable[[Path], Workers],
) -> None:
    url = broker_url(kind)
    queue = f"iogate-test-{uuid.uuid4().hex[:12]}"
    table = f"jobs_target_{uuid.uuid4().hex[:10]}"

    async def sql(query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(postgres_url, timeout=10)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    asyncio.run(sql(f"CREATE TABLE {table} (id serial PRIMARY KEY, v int UNIQUE)"))
    body = (
        f'[jobs]\nstore = "{postgres_url}"\nbroker = "{url}"\nqueue = "{queue}"\n'
        f"chunk_size = 50\nworker_chunks = {WORKER_CHUNKS}\nack_wait = 3\n\n"
        f'[databases.pg]\ntype = "postgresql"\nurl = "{postgres_url}"\n'
    )
    job_id = ""
    try:
        gateway = serve(body)
        group = workers(gateway.config)
        victim = group.start()
        group.start()
        reply = httpx.post(
            f"{gateway.base}/batch/jobs",
            json={"operations": operations(table), "concurrency": CONCURRENCY},
            timeout=60,
        )
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]

        def status() -> dict[str, Any]:
            answer = httpx.get(f"{gateway.base}/batch/jobs/{job_id}?limit=0", timeout=30)
            assert answer.status_code == 200, answer.text
            found: dict[str, Any] = answer.json()
            return found

        deadline = time.monotonic() + 120
        while status()["done"] < INSERTS // 4:
            assert time.monotonic() < deadline, group.output()
            time.sleep(0.05)  # polling other processes
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        # The gateway too: the job is in the store and on the broker already.
        gateway.signal(signal.SIGKILL)
        gateway.process.wait(timeout=30)
        gateway = serve(body)

        deadline = time.monotonic() + 180
        while (progress := status())["status"] != "done":
            assert time.monotonic() < deadline, (progress, group.output())
            time.sleep(0.1)  # polling other processes
        lines = httpx.get(
            f"{gateway.base}/batch/jobs/{job_id}",
            headers={"Accept": "application/x-ndjson"},
            timeout=60,
        ).content.splitlines()
        results = [orjson.loads(line) for line in lines]
        assert [r["index"] for r in results] == list(range(INSERTS))  # one result each
        rows = asyncio.run(sql(f"SELECT count(*) FROM {table}"))
        assert rows == INSERTS  # every insert applied once: none lost, none twice
        replayed = [r for r in results if not r["success"]]
        # Only inserts in flight in the killed worker ran again (and met the key).
        assert len(replayed) <= WORKER_CHUNKS * CONCURRENCY, replayed[:3]
        assert all(r["error_type"] == "query_error" for r in replayed)
    finally:
        asyncio.run(sql(f"DROP TABLE IF EXISTS {table}"))
        if job_id:
            for table_name in ("iogate_job_results", "iogate_job_chunks"):
                asyncio.run(sql(f"DELETE FROM {table_name} WHERE job_id = $1", job_id))
            asyncio.run(sql("DELETE FROM iogate_jobs WHERE id = $1", job_id))
        asyncio.run(drop_queue(kind, queue))
