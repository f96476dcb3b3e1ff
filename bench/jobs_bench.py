"""Durable jobs: scaling with ``iogate worker`` processes, per-worker throughput,
and a job's overhead against ``/batch/execute``.

Every server is a subprocess on a free loopback port; the job store is the
PostgreSQL ``test`` database, the broker NATS JetStream (and RabbitMQ where
said). Jobs are submitted with ``POST /batch/jobs`` and timed from the POST
until ``GET /batch/jobs/{id}?limit=0`` answers ``done`` (polled every 50 ms,
10 ms in part 3). "run" is the store's own ``finished_at - started_at``: from
the first chunk a runner starts to the last one it finishes, without the
submission and the poll.

1. **Latency-bound scaling**: N API operations (``POST /hook``, default
   4,000) against a local aiohttp upstream that answers after
   ``asyncio.sleep(0.020)``. The upstream runs in its own process (uvloop),
   so it does not share the workers' event loops. One ``iogate serve`` per
   (broker, worker count), each with its own stream/queue, all started up
   front, and 1, 2 or 4 ``iogate worker`` processes on it (see below).
   ``[jobs] chunk_size`` (250) and
   ``worker_chunks`` (2) at their defaults, the job's ``concurrency`` at its
   default (10) and at 50; ``[apis.hooks] max_connections = 200`` so the
   connection pool (default 30) does not cap concurrency 50 x 2 chunks.
   The "ceiling" column is the latency bound: workers x worker_chunks x
   concurrency / 20 ms.
2. **Fast local operations per worker**: one worker, a job of 50,000 memory
   cache ``set`` operations (iogate's fastest operation: no thread hop, no
   socket; ``--fast-op sqlite`` for SQLite point reads), against the same
   job run by the embedded default (no broker, the gateway runs it, SQLite
   job store).
3. **Overhead of a job against /batch/execute**: the same 1,000 SQLite point
   reads (concurrency 10, the default of both) as one ``/batch/execute``
   call (``[gateway] max_batch_operations = 1000``), as an embedded job and
   as a job on NATS with one worker.

**Workers are started afresh for each measured job** (parts 1 and 2; their
start-up is not timed) and stopped after it: an idle ``iogate worker`` on
NATS stops taking chunks after 2-30 s without a log line (nats-py 2.16's
``fetch`` raises a bare ``TimeoutError`` when an idle pull expires, which
``JetStreamDispatcher.consume`` does not catch, and ``JobService`` retries
only ``JobError``). Each job is checked: a job none of whose chunks start
within 10 s, or that one of the stack's workers took no chunk of, is
cancelled, its messages purged, and measured again on fresh workers (the
count is printed). RabbitMQ workers get the same treatment, for a like
comparison (cold connections to the store and the upstream on both).

CPU columns are each process's CPU time (every thread, from /proc) during
the job, per operation: "workers" sums the stack's worker processes;
"machine" is every core's busy time (/proc/stat: any process, PostgreSQL
and the broker included, and other work on the machine), and "cores busy"
the same divided by the job's time: near 2, the machine is the limit.
Variants alternate within each round (A B C ..., reversed every other
round) and the tables show the median of the rounds with the lowest and
highest. The machine has 2 cores shared by the upstream, the gateway, the
workers, PostgreSQL and the broker, and possibly other work: the load
average is printed, and the figures are for comparing, not absolute.

Everything it creates is removed at the end, also on an error or Ctrl+C:
the processes it started (SIGTERM, then SIGKILL), its NATS streams and
RabbitMQ queues (``iogate-bench-<uuid>``), its rows in ``iogate_jobs``,
``iogate_job_chunks`` and ``iogate_job_results`` (by job id), and its
temporary directory. Every wait has a deadline.

Run: ``.venv/bin/python bench/jobs_bench.py [--quick] [--rounds N] [--ops N]
[--fast-ops N] [--fast-op cache|sqlite] [--no-rabbit] [--only 1,2,3]
[--profile-worker FILE] [--keep-logs]`` (``--profile-worker``: part 2's
workers run under cProfile, their stats go to FILE.N; ``--keep-logs`` keeps
the temporary directory with every process's log, chunk timings included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson

PG_URL = os.environ.get("IOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
NATS_URL = os.environ.get("IOGATE_TEST_NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("IOGATE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
IOGATE = [sys.executable, "-m", "iogate.cli"]
LATENCY = 0.020  # seconds the upstream waits before answering
CHUNK_SIZE = 250  # [jobs] chunk_size default
WORKER_CHUNKS = 2  # [jobs] worker_chunks default
DEFAULT_CONCURRENCY = 10  # a job's and a batch's default concurrency
HIGH_CONCURRENCY = 50
ROWS = 10_000  # SQLite items table
WARM_OPS = 500  # operations in a warm-up job
START_TIMEOUT = 60.0  # seconds for a process to be ready
JOB_TIMEOUT = 180.0  # seconds for one job, at most
STALL_AFTER = 10.0  # seconds without a started chunk: the workers stopped consuming
ATTEMPTS = 4  # tries of one measurement when a worker had stopped consuming
HTTP_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CHUNK_LINE = re.compile(r"chunk \d+: (\d+) operations in ([0-9.]+)s")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


# -- the upstream (its own process) ------------------------------------------------


def serve_upstream(port: int) -> None:
    """``POST /hook`` answers after LATENCY seconds; ``GET /count`` how many it served."""
    from aiohttp import web

    served = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal served
        await request.read()
        await asyncio.sleep(LATENCY)
        served += 1
        return web.json_response({"ok": True})

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"served": served})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_get("/count", count)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
        await asyncio.Event().wait()  # until SIGTERM ends the process

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


# -- processes ------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    command: list[str]
    cwd: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "IOGATE_CONFIG"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self) -> str:
        return self.output()[-3000:]

    def cpu_seconds(self) -> float:
        """utime + stime of the process, every thread included."""
        assert self.process is not None
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / CLOCK_TICKS

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def reap(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle, not iowait) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


SERVICES = {"postgres", "nats-server", "beam.smp"}  # PostgreSQL, NATS, RabbitMQ


def services_delta(before: dict[int, float]) -> float:
    """CPU seconds the service processes spent since ``before`` (new ones: all of theirs;
    PostgreSQL backends that exited meanwhile are missed)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in services_cpu().items())


def services_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL, NATS and RabbitMQ server process, by pid."""
    found: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1]
        if name in SERVICES:
            fields = rest.split()
            found[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


def wait_until(ready: Any, what: str, procs: list[Proc], timeout: float = START_TIMEOUT) -> None:
    """Poll ``ready()`` (other processes: nothing to await) until true, with a deadline."""
    deadline = time.monotonic() + timeout
    while not ready():
        for proc in procs:
            proc.check_alive()
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
            raise RuntimeError(f"{what} not ready within {timeout:.0f}s\n{tails}")
        time.sleep(0.05)


@dataclass
class Stack:
    """One ``iogate serve`` and the ``iogate worker`` processes on its queue."""

    label: str
    gateway: Proc
    port: int
    config: Path
    worker_count: int = 0
    workers: list[Proc] = field(default_factory=list)
    broker: str = ""  # "", "nats" or "rabbit"
    queue: str = ""
    starts: int = 0  # worker processes started so far (their log names)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def procs(self) -> list[Proc]:
        return [self.gateway, *self.workers]


class Bench:
    """Owns every process, queue, stream, job id and file it creates."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[Proc] = []
        self.streams: list[str] = []
        self.queues: list[str] = []
        self.pg_job_ids: list[str] = []
        self.client = httpx.Client(timeout=HTTP_TIMEOUT)
        self.upstream: Proc | None = None
        self.upstream_port = 0
        self.repeated: list[str] = []  # measurements repeated, and why

    # -- starting

    def _proc(self, name: str, command: list[str], cwd: Path | None = None) -> Proc:
        proc = Proc(name, command, cwd or self.folder, self.folder / f"{name}.log")
        self.procs.append(proc)
        proc.start()
        return proc

    def start_upstream(self) -> None:
        self.upstream_port = free_port()
        self.upstream = self._proc(
            "upstream", [sys.executable, __file__, "--upstream", str(self.upstream_port)]
        )

        def answers() -> bool:
            try:
                return self.client.get(self.upstream_url("/count"), timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, "upstream", [self.upstream])

    def upstream_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.upstream_port}{path}"

    def stack(self, label: str, body: str, *, broker: str = "", workers: int = 0) -> Stack:
        """Start a gateway with ``body`` (TOML after ``[gateway]``'s host and port),
        not waited for yet; ``workers``: how many :meth:`start_workers` starts."""
        port = free_port()
        queue = ""
        jobs = ""
        if broker:
            queue = f"iogate-bench-{uuid.uuid4().hex[:12]}"
            (self.streams if broker == "nats" else self.queues).append(queue)
            url = NATS_URL if broker == "nats" else AMQP_URL
            jobs = f'[jobs]\nstore = "{PG_URL}"\nbroker = "{url}"\nqueue = "{queue}"\n\n'
        cwd = self.folder / label
        cwd.mkdir()
        config = cwd / "iogate.toml"  # the gateway's and its workers'
        config.write_text(
            f'[gateway]\nhost = "127.0.0.1"\nport = {port}\n{body}\n{jobs}', encoding="utf-8"
        )
        gateway = self._proc(
            f"{label}-gateway",
            [*IOGATE, "serve", "--config", str(config), "--log-level", "warning"],
            cwd,
        )
        return Stack(label, gateway, port, config, workers, broker=broker, queue=queue)

    def start_workers(self, stack: Stack, profile: Path | None = None) -> None:
        """Fresh worker processes for ``stack`` (the old ones stopped), each consuming.

        Fresh for every measured job, because an idle ``iogate worker`` on
        NATS stops taking chunks after 2-30 s (see the module's docstring)."""
        self.stop_workers(stack)
        for _ in range(stack.worker_count):
            name = f"{stack.label}-worker{stack.starts}"
            command = [*IOGATE, "worker", "--config", str(stack.config)]
            if profile is not None:
                command = [
                    sys.executable,
                    "-m",
                    "cProfile",
                    "-o",
                    f"{profile}.{stack.starts}",
                    *command[1:],
                ]
            stack.starts += 1
            stack.workers.append(self._proc(name, command, stack.config.parent))
        for worker in stack.workers:
            wait_until(
                lambda worker=worker: "iogate worker taking up to" in worker.output(),
                worker.name,
                [worker],
            )

    def stop_workers(self, stack: Stack) -> None:
        for worker in stack.workers:
            worker.terminate()
        for worker in stack.workers:
            worker.reap()
        stack.workers.clear()

    def wait_ready(self, stacks: list[Stack]) -> None:
        for stack in stacks:

            def healthy(stack: Stack = stack) -> bool:
                try:
                    return self.client.get(f"{stack.base}/health", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(healthy, f"{stack.label} gateway", [stack.gateway])

    # -- jobs

    def run_job(
        self,
        stack: Stack,
        operations: bytes,
        *,
        poll: float = 0.05,
        expected: int,
        stall_after: float = STALL_AFTER,
    ) -> JobRun:
        """Submit ``operations`` (a JSON body), poll until done; timings and CPU.

        Raises Stalled when no chunk started within ``stall_after`` seconds
        or a worker of the stack ran none of the job's chunks (a worker that
        had stopped consuming): the job is cancelled and its messages purged."""
        services_before = services_cpu()
        cpu_before = self._cpu(stack)
        posted_at = time.time()  # the store's clock, for the phases
        started = time.perf_counter()
        reply = self.client.post(
            f"{stack.base}/batch/jobs",
            content=operations,
            headers={"content-type": "application/json"},
        )
        accepted = time.perf_counter() - started
        if reply.status_code != 202:
            raise RuntimeError(f"{stack.label}: POST /batch/jobs {reply.status_code}: {reply.text}")
        job_id = reply.json()["job_id"]
        if stack.broker:
            self.pg_job_ids.append(job_id)
        deadline = started + JOB_TIMEOUT
        while True:
            answer = self.client.get(f"{stack.base}/batch/jobs/{job_id}", params={"limit": 0})
            if answer.status_code != 200:
                raise RuntimeError(f"{stack.label}: GET job {answer.status_code}: {answer.text}")
            progress = answer.json()
            if progress["status"] == "done":
                break
            if progress["status"] not in ("queued", "running"):
                raise RuntimeError(f"{stack.label}: job {job_id} is {progress['status']}")
            now = time.perf_counter()
            if progress["started_at"] is None and now > started + stall_after:
                self._abandon(stack, job_id)
                raise Stalled(f"{stack.label}: no chunk started within {stall_after:.0f}s")
            if now > deadline:
                tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in stack.procs)
                raise RuntimeError(
                    f"{stack.label}: job not done in {JOB_TIMEOUT}s: {progress}\n{tails}"
                )
            time.sleep(poll)  # another process runs it: poll
        elapsed = time.perf_counter() - started
        cpu_after = self._cpu(stack)
        cpu_before["services"] = 0.0  # cpu_after holds the difference already
        cpu_after["services"] = services_delta(services_before)
        if progress["total"] != expected or progress["done"] != expected or progress["failed"]:
            raise RuntimeError(
                f"{stack.label}: job {job_id}: {progress['done']} done, {progress['failed']} "
                f"failed of {progress['total']} (expected {expected}); first failures: "
                f"{self._failures(stack, job_id)}"
            )
        idle = [w.name for w in stack.workers if job_id not in w.output()]
        if idle and progress["chunks"] >= WORKER_CHUNKS * len(stack.workers):
            raise Stalled(f"{stack.label}: {', '.join(idle)} ran no chunk of the job")
        return JobRun(
            seconds=elapsed,
            run_seconds=progress["finished_at"] - progress["started_at"],
            operations=expected,
            cpu={role: cpu_after[role] - cpu_before[role] for role in cpu_before},
            submit_seconds=accepted,
            start_delay=progress["started_at"] - posted_at,
            seen_delay=posted_at + elapsed - progress["finished_at"],
        )

    def _abandon(self, stack: Stack, job_id: str) -> None:
        """Cancel a stalled job and drop its messages, so a retry starts clean."""
        with contextlib.suppress(httpx.HTTPError):
            self.client.delete(f"{stack.base}/batch/jobs/{job_id}")
        if stack.broker == "nats":
            asyncio.run(purge_stream(stack.queue))

    def run_batch(self, stack: Stack, body: bytes, *, expected: int) -> JobRun:
        services_before = services_cpu()
        cpu_before = self._cpu(stack)
        started = time.perf_counter()
        reply = self.client.post(
            f"{stack.base}/batch/execute",
            content=body,
            headers={"content-type": "application/json"},
        )
        elapsed = time.perf_counter() - started
        cpu_after = self._cpu(stack)
        cpu_before["services"] = 0.0  # cpu_after holds the difference already
        cpu_after["services"] = services_delta(services_before)
        if reply.status_code != 200:
            raise RuntimeError(f"{stack.label}: /batch/execute {reply.status_code}: {reply.text}")
        results = reply.json()["results"]
        failed = [r for r in results if not r["success"]]
        if len(results) != expected or failed:
            raise RuntimeError(
                f"/batch/execute: {len(failed)} of {len(results)} failed: {failed[:2]}"
            )
        return JobRun(
            seconds=elapsed,
            run_seconds=elapsed,
            operations=expected,
            cpu={role: cpu_after[role] - cpu_before[role] for role in cpu_before},
        )

    def _failures(self, stack: Stack, job_id: str) -> list[Any]:
        page = self.client.get(f"{stack.base}/batch/jobs/{job_id}", params={"limit": 1000})
        return [r for r in page.json().get("results", []) if not r.get("success")][:3]

    def _cpu(self, stack: Stack) -> dict[str, float]:
        cpu = {
            "gateway": stack.gateway.cpu_seconds(),
            "workers": sum(w.cpu_seconds() for w in stack.workers),
        }
        if self.upstream is not None:
            cpu["upstream"] = self.upstream.cpu_seconds()
        cpu["machine"] = machine_busy_seconds()
        return cpu

    # -- cleaning up

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.reap()
        self.client.close()
        for what, cleanup in (
            ("job rows", delete_job_rows(self.pg_job_ids)),
            ("NATS streams", delete_streams(self.streams)),
            ("RabbitMQ queues", delete_queues(self.queues)),
        ):
            try:
                asyncio.run(cleanup)
            except Exception as exc:
                log(f"cleanup of {what} failed: {exc!r}")


class Stalled(Exception):
    """A measured job could not use every worker (one had stopped consuming)."""


@dataclass(frozen=True)
class JobRun:
    seconds: float  # POST until done was seen
    run_seconds: float  # first chunk started until the last finished (the store's clock)
    operations: int
    cpu: dict[str, float]  # role -> CPU seconds during the job
    submit_seconds: float = 0.0  # POST until its 202
    start_delay: float = 0.0  # POST until the first chunk started
    seen_delay: float = 0.0  # the last chunk finished until the poll saw "done"

    @property
    def ops_per_s(self) -> float:
        return self.operations / self.seconds

    def cpu_us(self, role: str) -> float:
        return self.cpu.get(role, 0.0) / self.operations * 1e6

    @property
    def busy_cores(self) -> float:
        """Cores the whole machine kept busy during the job, on average (any process)."""
        return self.cpu["machine"] / self.seconds


async def delete_job_rows(job_ids: list[str]) -> None:
    if not job_ids:
        return
    conn = await asyncpg.connect(PG_URL, timeout=10)
    try:
        for table, column in (
            ("iogate_job_results", "job_id"),
            ("iogate_job_chunks", "job_id"),
            ("iogate_jobs", "id"),
        ):
            await conn.execute(
                f"DELETE FROM {table} WHERE {column} = ANY($1::text[])", job_ids, timeout=120
            )
    finally:
        await conn.close(timeout=10)


async def delete_streams(streams: list[str]) -> None:
    if not streams:
        return
    import nats

    client = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
    try:
        js = client.jetstream(timeout=5)
        for stream in streams:
            with contextlib.suppress(Exception):  # never created, or already gone
                await js.delete_stream(stream)
    finally:
        await client.close()


async def purge_stream(stream: str) -> None:
    import nats

    client = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
    try:
        await client.jetstream(timeout=5).purge_stream(stream)
    finally:
        await client.close()


async def delete_queues(queues: list[str]) -> None:
    if not queues:
        return
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL, timeout=5)
    try:
        channel = await connection.channel()
        for queue in queues:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await channel.queue_delete(queue)
    finally:
        await connection.close()


# -- workloads ---------------------------------------------------------------------


def job_body(operations: list[dict[str, Any]], concurrency: int) -> bytes:
    return orjson.dumps({"operations": operations, "concurrency": concurrency})


def hook_operations(count: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "api",
            "api_name": "hooks",
            "method": "POST",
            "endpoint": "/hook",
            "data": {"i": i},
        }
        for i in range(count)
    ]


def fast_operations(kind: str, count: int) -> list[dict[str, Any]]:
    if kind == "cache":
        return [
            {
                "type": "database",
                "db_name": "cache",
                "query": f"bench:{i % 1000}",
                "params": {"operation": "set", "value": i},
            }
            for i in range(count)
        ]
    return sqlite_reads(count)


def sqlite_reads(count: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "database",
            "db_name": "main",
            "query": "SELECT id, name FROM items WHERE id = ?",
            "params": [i % ROWS + 1],
        }
        for i in range(count)
    ]


def make_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany(
            "INSERT INTO items VALUES (?, ?)", ((i, f"item-{i}") for i in range(1, ROWS + 1))
        )


def local_databases(sqlite_path: Path) -> str:
    """The embedded default's resources (SQLite ``main``, memory ``cache``), on our file."""
    return (
        f'[databases.main]\ntype = "sqlite"\npath = "{sqlite_path}"\n\n'
        '[databases.cache]\ntype = "memory"\n\n'
    )


# -- reporting -----------------------------------------------------------------------


def spread(values: list[float], fmt: str = "{:,.2f}") -> str:
    return (
        f"{fmt.format(statistics.median(values))} "
        f"({fmt.format(min(values))}-{fmt.format(max(values))})"
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def order(items: list[Any], round_number: int) -> list[Any]:
    return items if round_number % 2 == 0 else items[::-1]


def chunk_seconds(serial: int, stack: Stack) -> tuple[int, float]:
    """(operations, seconds) summed over the chunk log lines of worker number ``serial``."""
    text = (stack.config.parent.parent / f"{stack.label}-worker{serial}.log").read_text()
    found = [(int(m.group(1)), float(m.group(2))) for m in CHUNK_LINE.finditer(text)]
    return sum(ops for ops, _ in found), sum(seconds for _, seconds in found)


def measure(
    bench: Bench,
    stack: Stack,
    body: bytes,
    *,
    expected: int,
    fresh: bool,
    poll: float = 0.05,
    profile: Path | None = None,
) -> JobRun:
    """One job on ``stack``; ``fresh``: on newly started workers, stopped after.

    Repeated (up to ATTEMPTS) when a worker had stopped consuming."""
    for attempt in range(1, ATTEMPTS + 1):
        if stack.worker_count and (fresh or not stack.workers):
            bench.start_workers(stack, profile)
        try:
            return bench.run_job(stack, body, expected=expected, poll=poll)
        except Stalled as exc:
            bench.repeated.append(str(exc))
            log(f"  {exc}: measurement repeated (attempt {attempt})")
            bench.stop_workers(stack)
        finally:
            if fresh:
                bench.stop_workers(stack)
    raise RuntimeError(f"{stack.label}: workers stopped consuming {ATTEMPTS} times in a row")


# -- 1. latency-bound scaling ------------------------------------------------------------


def part_scaling(bench: Bench, args: argparse.Namespace) -> list[str]:
    bench.start_upstream()
    body = (
        f'[apis.hooks]\nbase_url = "http://127.0.0.1:{bench.upstream_port}"\n'
        "max_connections = 200\ntimeout = 10\n\n"
    )
    stacks: dict[tuple[str, int], Stack] = {}
    brokers = ["nats"] + ([] if args.no_rabbit else ["rabbit"])
    for broker in brokers:
        counts = args.workers if broker == "nats" else args.rabbit_workers
        for count in counts:
            stacks[broker, count] = bench.stack(
                f"{broker}-{count}w", body, broker=broker, workers=count
            )
    log(f"part 1: {len(stacks)} gateways; workers started afresh for each job")
    bench.wait_ready(list(stacks.values()))
    operations = hook_operations(args.ops)
    bodies = {c: job_body(operations, c) for c in (DEFAULT_CONCURRENCY, HIGH_CONCURRENCY)}
    variants = [
        (broker, count, concurrency)
        for broker, count in stacks
        for concurrency in (DEFAULT_CONCURRENCY, HIGH_CONCURRENCY)
    ]
    warm = job_body(hook_operations(WARM_OPS), HIGH_CONCURRENCY)
    for stack in stacks.values():  # warm-up: the gateway, the stream/queue, the consumer
        measure(bench, stack, warm, expected=WARM_OPS, fresh=True)
    served_before = bench.client.get(bench.upstream_url("/count")).json()["served"]
    runs: dict[tuple[str, int, int], list[JobRun]] = {v: [] for v in variants}
    for round_number in range(args.rounds):
        for broker, count, concurrency in order(variants, round_number):
            stack = stacks[broker, count]
            run = measure(bench, stack, bodies[concurrency], expected=args.ops, fresh=True)
            runs[broker, count, concurrency].append(run)
            log(
                f"  round {round_number} {broker} {count}w c{concurrency}: "
                f"{run.seconds:.2f}s {run.ops_per_s:,.0f} ops/s"
            )
    served = bench.client.get(bench.upstream_url("/count")).json()["served"] - served_before

    lines = [
        f"### Latency-bound: {args.ops:,} API operations, upstream answers after "
        f"{LATENCY * 1000:.0f} ms",
        "",
        "| broker | workers | concurrency | s, POST to done (min-max) | ops/s | vs 1 worker "
        "| ceiling ops/s | run s (store) | CPU us/op: workers / gateway / upstream / "
        "PG+broker / machine | cores busy |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for broker, count, concurrency in variants:
        found = runs[broker, count, concurrency]
        seconds = median([r.seconds for r in found])
        fewest = min(c for b, c in stacks if b == broker)
        one = median([r.seconds for r in runs[broker, fewest, concurrency]])
        ceiling = count * WORKER_CHUNKS * concurrency / LATENCY
        cpu = " / ".join(
            f"{median([r.cpu_us(role) for r in found]):.0f}"
            for role in ("workers", "gateway", "upstream", "services", "machine")
        )
        lines.append(
            f"| {'NATS JetStream' if broker == 'nats' else 'RabbitMQ'} | {count} | {concurrency} "
            f"| {spread([r.seconds for r in found])} | {args.ops / seconds:,.0f} "
            f"| {one / seconds:.2f}x | {ceiling:,.0f} "
            f"| {median([r.run_seconds for r in found]):.2f} | {cpu} "
            f"| {median([r.busy_cores for r in found]):.2f} |"
        )
    calls = args.ops * len(variants) * args.rounds
    lines += [
        "",
        f"Upstream calls in the timed rounds: {served:,} for {calls:,} operations "
        "(more: chunks run again, after a worker had stopped consuming).",
        "",
    ]
    return lines


# -- 2. fast local operations per worker -------------------------------------------------


def part_fast(
    bench: Bench, args: argparse.Namespace, sqlite_path: Path
) -> tuple[list[str], Stack, Stack]:
    databases = local_databases(sqlite_path)
    gateway = "max_batch_operations = 1000\n\n"
    worker_stack = bench.stack("local-nats", gateway + databases, broker="nats", workers=1)
    embedded = bench.stack("embedded", gateway + databases)
    log("parts 2-3: the embedded gateway, and a gateway on NATS with 1 worker")
    bench.wait_ready([worker_stack, embedded])
    if not args.fast_ops:
        return [], worker_stack, embedded
    profile = Path(args.profile_worker).resolve() if args.profile_worker else None
    body = job_body(fast_operations(args.fast_op, args.fast_ops), DEFAULT_CONCURRENCY)
    warm = job_body(fast_operations(args.fast_op, 2000), DEFAULT_CONCURRENCY)
    for stack in (worker_stack, embedded):
        measure(bench, stack, warm, expected=2000, fresh=True)
    variants = [worker_stack, embedded]
    runs: dict[str, list[JobRun]] = {s.label: [] for s in variants}
    in_chunks: list[float] = []  # share of the run the worker's chunk slots were busy
    for round_number in range(args.fast_rounds):
        for stack in order(variants, round_number):
            if stack is worker_stack:
                bench.start_workers(stack, profile)
            run = measure(bench, stack, body, expected=args.fast_ops, fresh=False)
            if stack is worker_stack:
                bench.stop_workers(stack)  # its log is complete now
                _, seconds = chunk_seconds(stack.starts - 1, stack)
                in_chunks.append(seconds / (WORKER_CHUNKS * run.run_seconds))
            runs[stack.label].append(run)
            log(f"  round {round_number} {stack.label}: {run.seconds:.2f}s {run.ops_per_s:,.0f}/s")
    what = "memory cache `set`" if args.fast_op == "cache" else "SQLite point read"
    lines = [
        f"### Fast local operations: {args.fast_ops:,} x {what}, concurrency "
        f"{DEFAULT_CONCURRENCY}, chunks of {CHUNK_SIZE}",
        "",
        "| runner | s, POST to done (min-max) | ops/s | ops/s in the run (store) "
        "| CPU us/op: worker / gateway / PG+broker / machine | cores busy |",
        "|---|---|---:|---:|---|---:|",
    ]
    names = {
        worker_stack.label: "1 `iogate worker` (NATS, PostgreSQL store)",
        embedded.label: "embedded (the gateway, SQLite store)",
    }
    for stack in variants:
        found = runs[stack.label]
        seconds = median([r.seconds for r in found])
        run_s = median([r.run_seconds for r in found])
        lines.append(
            f"| {names[stack.label]} | {spread([r.seconds for r in found])} "
            f"| {args.fast_ops / seconds:,.0f} | {args.fast_ops / run_s:,.0f} "
            f"| {median([r.cpu_us('workers') for r in found]):.0f} / "
            f"{median([r.cpu_us('gateway') for r in found]):.0f} / "
            f"{median([r.cpu_us('services') for r in found]):.0f} / "
            f"{median([r.cpu_us('machine') for r in found]):.0f} "
            f"| {median([r.busy_cores for r in found]):.2f} |"
        )
    if in_chunks:
        lines += [
            "",
            f"The worker's {WORKER_CHUNKS} chunk slots were inside a chunk (the runner's "
            f"log lines) {median(in_chunks):.0%} of the run (median); the rest is taking the "
            "next chunk: broker fetch, reading the job and chunk, marking it started, and "
            "after it, marking it finished and the ack.",
        ]
    lines.append("")
    return lines, worker_stack, embedded


# -- 3. job overhead vs /batch/execute ---------------------------------------------------


def part_overhead(
    bench: Bench, args: argparse.Namespace, worker_stack: Stack, embedded: Stack
) -> list[str]:
    count = 1000
    body = job_body(sqlite_reads(count), DEFAULT_CONCURRENCY)
    variants: list[tuple[str, str, Stack]] = [
        ("`POST /batch/execute` (one request)", "batch", embedded),
        ("job, embedded (the gateway runs it; SQLite store)", "job", embedded),
        ("job, NATS + 1 worker (PostgreSQL store)", "job", worker_stack),
    ]
    # The worker stays up here: the gaps between its jobs are shorter than the
    # 2 s an idle fetch waits, so it does not stop consuming (measure() would
    # notice and repeat the job on a fresh one).
    runs: dict[str, list[JobRun]] = {label: [] for label, _, _ in variants}
    for round_number in range(-1, args.overhead_rounds):  # round -1: warm-up
        for label, kind, stack in order(variants, round_number):
            if kind == "batch":
                run = bench.run_batch(stack, body, expected=count)
            else:
                run = measure(bench, stack, body, expected=count, fresh=False, poll=0.01)
            if round_number >= 0:
                runs[label].append(run)
    bench.stop_workers(worker_stack)
    base = median([r.seconds for r in runs[variants[0][0]]]) * 1000
    lines = [
        f"### Overhead: the same {count:,} SQLite point reads, concurrency {DEFAULT_CONCURRENCY}",
        "",
        "| variant | ms (min-max) | vs /batch/execute | + ms | POST until 202 ms "
        "| until first chunk ms | run ms (store) | done seen after ms "
        "| CPU us/op: gateway / worker / PG+broker |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, kind, _ in variants:
        found = runs[label]
        ms = median([r.seconds for r in found]) * 1000

        def phase(name: str, found: list[JobRun] = found, kind: str = kind) -> str:
            if kind == "batch":
                return ""
            return f"{median([getattr(r, name) for r in found]) * 1000:,.0f}"

        lines.append(
            f"| {label} | {spread([r.seconds * 1000 for r in found], '{:,.0f}')} "
            f"| {ms / base:.1f}x | {ms - base:+,.0f} | {phase('submit_seconds')} "
            f"| {phase('start_delay')} | {phase('run_seconds')} | {phase('seen_delay')} "
            f"| {median([r.cpu_us('gateway') for r in found]):.0f} / "
            f"{median([r.cpu_us('workers') for r in found]):.0f} / "
            f"{median([r.cpu_us('services') for r in found]):.0f} |"
        )
    lines.append("")
    return lines


# -- main ------------------------------------------------------------------------------


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl+C does: through the clean-up."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(args: argparse.Namespace) -> None:
    missing = [
        name
        for name, url, port, needed in (
            ("PostgreSQL", PG_URL, 5432, True),
            ("NATS", NATS_URL, 4222, True),
            ("RabbitMQ", AMQP_URL, 5672, not args.no_rabbit and "1" in args.only),
        )
        if needed and not port_open(url, port)
    ]
    if missing:
        print(f"Skipped: no {', '.join(missing)} answering (see the module's docstring).")
        return
    folder = Path(tempfile.mkdtemp(prefix="iogate-jobs-bench-"))
    started = time.monotonic()
    load = os.getloadavg()[0]
    lines: list[str] = []
    with stopped_by_sigterm():
        bench = Bench(folder)
        try:
            if "1" in args.only:
                part1 = Bench(folder / "part1")
                (folder / "part1").mkdir()
                try:
                    lines += part_scaling(part1, args)
                finally:
                    part1.close()
                    bench.repeated += part1.repeated
            if "2" in args.only or "3" in args.only:
                sqlite_path = folder / "items.db"
                make_sqlite(sqlite_path)
                if "2" not in args.only:
                    args.fast_ops = 0
                fast, worker_stack, embedded = part_fast(bench, args, sqlite_path)
                lines += fast
                if "3" in args.only:
                    lines += part_overhead(bench, args, worker_stack, embedded)
        finally:
            bench.close()
            if args.keep_logs:
                log(f"logs kept in {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(lines))
    if bench.repeated:
        print(
            f"{len(bench.repeated)} measurement(s) repeated because a NATS worker had stopped "
            f"consuming: {'; '.join(bench.repeated)}."
        )
    print(
        f"Medians of interleaved rounds ({args.rounds} for part 1, {args.fast_rounds} for part 2, "
        f"{args.overhead_rounds} for part 3); {time.monotonic() - started:.0f} s in all; "
        f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} at the end (2 cores)."
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # the upstream process
    parser.add_argument("--quick", action="store_true", help="small jobs, 1 round (~1 minute)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, parts 1 and 2 (3)")
    parser.add_argument("--ops", type=int, help="API operations per job in part 1 (4000)")
    parser.add_argument("--fast-ops", type=int, help="operations per job in part 2 (50000)")
    parser.add_argument("--fast-op", choices=("cache", "sqlite"), default="cache")
    parser.add_argument("--no-rabbit", action="store_true", help="NATS only in part 1")
    parser.add_argument("--only", default="1,2,3", help="parts to run, e.g. 1 or 2,3")
    parser.add_argument("--profile-worker", metavar="FILE", help="cProfile part 2's worker")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    args.workers = [1, 2, 4]
    args.rabbit_workers = [1, 2]
    rounds = args.rounds or (1 if args.quick else 3)
    args.rounds = rounds
    args.fast_rounds = rounds
    args.overhead_rounds = max(rounds, 3 if args.quick else 7)
    args.ops = args.ops or (1000 if args.quick else 4000)
    if args.fast_ops is None:
        args.fast_ops = 10_000 if args.quick else 50_000
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.upstream:
        serve_upstream(arguments.upstream)
    else:
        main(arguments)
