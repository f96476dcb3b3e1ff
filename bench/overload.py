"""Adaptive concurrency under overload: a real ``iogate serve`` in front of PostgreSQL.

The resource: one PostgreSQL database whose operation has a real capacity,
so that latency grows with concurrency past a knee. Two workloads:

- ``sleep`` (default): ``SELECT pg_sleep(S)`` through a pool of ``--pool``
  connections. The capacity is ``pool / S`` operations per second, set by
  the pool, not by the machine: past ``pool`` concurrent operations, every
  extra one waits for a connection in iogate's pool. This models a database
  whose throughput is bounded by connection time (I/O-bound statements,
  locks), and it is stable on a small shared machine, which a CPU-bound
  statement is not. The defaults (4 connections, 100 ms: about 40/s) keep
  5x the capacity (about 200 requests/s) far below what the gateway's HTTP
  layer itself can take on a busy 2-core machine: the limiter protects the
  resource, not the gateway's own CPU, and a run where the gateway is the
  bottleneck measures the machine, not the limiter.
- ``cpu``: ``SELECT count(*) FROM generate_series(1, N)``, CPU-bound in the
  server, through a pool of 20. The capacity is the machine's cores, shared
  with the gateway and the load generator, so its figures move with
  whatever else runs.

Phases, each against a fresh ``iogate serve`` process (one worker,
loopback, log level warning):

1. limiter **off**: unloaded latency (closed loop, one request at a time),
   then the capacity: closed loop at concurrency 1, 2, 4, ... until the
   throughput stops growing; the capacity is the highest throughput, the
   knee the lowest concurrency within 5 % of it. Then the overload.
2. limiter **on** (``adaptive_concurrency = true``, defaults): unloaded
   latency (which also teaches the limiter its baseline, as light traffic
   would), then the same overload.

The overload is open loop: Poisson arrivals at ``--factor`` x capacity for
``--duration`` seconds. Each request's latency counts from the moment it was
due, not from when the client got round to sending it (no coordinated
omission). "Admitted" requests are those answered 200; goodput is their
number per second answered within the overload window. When the client
already has ``--max-outstanding`` requests in flight, further ones are not
sent and are reported as "client-shed" (a bound on the generator, not a
gateway outcome). "Refusal p99" is how long the 503s themselves took: a
refusal does no I/O, so it measures the gateway's and the machine's own
stalls (GC pauses, CPU taken by other processes) during the run.

Run: ``.venv/bin/python bench/overload.py [--workload sleep|cpu] [--pool 4]
[--sleep-ms 100] [--factor 5] [--duration 15] [--gc-freeze] [--json FILE]``. Needs
PostgreSQL at ``IOGATE_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "IOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# -- the gateway ---------------------------------------------------------------------------

# ``--gc-freeze``: ``iogate serve`` with everything imported at start-up moved
# out of the cyclic GC's reach (``gc.freeze()``, as CPython's docs advise for
# servers), so a full collection does not walk it again under load. Not what
# ``iogate serve`` does today; a what-if for the GC pauses this bench shows.
GC_FREEZE_LAUNCHER = (
    "import gc, sys; import iogate.cli as cli, iogate.gateway.app, asyncpg, uvicorn; "
    "gc.collect(); gc.freeze(); sys.argv = ['iogate', *sys.argv[1:]]; cli.main()"
)


class Gateway:
    """``iogate serve`` with one PostgreSQL database ``pg``."""

    def __init__(
        self, workdir: Path, *, pool: int, adaptive: str | None, gc_freeze: bool = False
    ) -> None:
        self.gc_freeze = gc_freeze
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = workdir / f"iogate-{self.port}.toml"
        self.log = workdir / f"gateway-{self.port}.log"
        extra = f"adaptive_concurrency = {adaptive}\n" if adaptive else ""
        self.config.write_text(
            f"""
[gateway]
host = "127.0.0.1"
port = {self.port}
request_timeout = 5

[databases.pg]
type = "postgresql"
url = "{POSTGRES_URL}"
min_connections = {pool}
max_connections = {pool}
acquire_timeout = 2
statement_timeout = 5
{extra}""",
            encoding="utf-8",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            launcher = ["-c", GC_FREEZE_LAUNCHER] if self.gc_freeze else ["-m", "iogate.cli"]
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *launcher,
                    "serve",
                    "--config",
                    str(self.config),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("gateway exited:\n" + self.log.read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5):
                    return
            except OSError:
                time.sleep(0.05)  # polling a subprocess: nothing to await
        raise RuntimeError("gateway did not come up:\n" + self.log.read_text())

    def cpu_seconds(self) -> float:
        """The gateway process's CPU time so far (user + system)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- load ----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    latencies_ok: list[float] = field(default_factory=list)
    latencies_refused: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    client_shed: int = 0
    max_client_lag: float = 0.0
    gateway_cpu: float = float("nan")  # seconds of gateway CPU during the phase
    # Goodput counts answers that arrive by this perf_counter() time (None: all).
    ends_at: float | None = None
    ok_in_time: int = 0

    def add(self, status: int | str, latency: float, error_type: str | None) -> None:
        key = str(status) if error_type is None else f"{status} {error_type}"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if status == 200:
            self.latencies_ok.append(latency)
            if self.ends_at is None or time.perf_counter() <= self.ends_at:
                self.ok_in_time += 1
        elif status == 503 and error_type == "overloaded":
            self.latencies_refused.append(latency)

    def summary(self) -> dict[str, Any]:
        ok = self.latencies_ok
        return {
            "phase": self.name,
            "seconds": round(self.seconds, 2),
            "ok": len(ok),
            "goodput_per_s": round(self.ok_in_time / self.seconds, 1),
            "p50_ms": round(percentile(ok, 0.50) * 1000, 2),
            "p99_ms": round(percentile(ok, 0.99) * 1000, 2),
            "max_ms": round(max(ok, default=float("nan")) * 1000, 2),
            "refused_p99_ms": round(percentile(self.latencies_refused, 0.99) * 1000, 2),
            "statuses": dict(sorted(self.statuses.items())),
            "client_shed": self.client_shed,
            "max_client_lag_ms": round(self.max_client_lag * 1000, 2),
            "gateway_cpu_share": round(self.gateway_cpu / self.seconds, 2),
        }


async def _send(
    session: aiohttp.ClientSession, url: str, body: bytes, due: float, phase: Phase
) -> None:
    try:
        async with session.post(
            url, data=body, headers={"content-type": "application/json"}
        ) as response:
            status: int | str = response.status
            error_type = None
            if response.status != 200:
                payload = await response.json(content_type=None)
                error_type = payload.get("error_type") if isinstance(payload, dict) else None
            else:
                await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        status, error_type = "client", type(exc).__name__
    phase.add(status, time.perf_counter() - due, error_type)


async def closed_loop(
    session: aiohttp.ClientSession, url: str, body: bytes, *, concurrency: int, seconds: float
) -> Phase:
    phase = Phase(f"closed c={concurrency}", seconds)
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            await _send(session, url, body, time.perf_counter(), phase)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    return phase


async def open_loop(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    rate: float,
    seconds: float,
    max_outstanding: int,
    name: str,
    seed: int = 14,
) -> Phase:
    phase = Phase(name, seconds)
    rng = random.Random(seed)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    due = start
    end = start + seconds
    phase.ends_at = end
    while True:
        due += rng.expovariate(rate)
        if due >= end:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            phase.max_client_lag = max(phase.max_client_lag, -delay)
        if len(tasks) >= max_outstanding:
            phase.client_shed += 1
            continue
        task = asyncio.create_task(_send(session, url, body, due, phase))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    # Goodput: 200s answered within the offered window, per second of it (a
    # backlog served after the window is not capacity used during it).
    phase.seconds = seconds
    return phase


async def fetch_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json(content_type=None)


# -- the run -------------------------------------------------------------------------------


def statement(args: argparse.Namespace) -> bytes:
    if args.workload == "sleep":
        query = f"SELECT pg_sleep({args.sleep_ms / 1000})"
    else:
        query = f"SELECT count(*) FROM generate_series(1, {args.cpu_rows})"
    return json.dumps({"db_name": "pg", "query": query}).encode()


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    body = statement(args)
    pool = args.pool if args.workload == "sleep" else 20
    out: dict[str, Any] = {
        "workload": args.workload,
        "statement": json.loads(body)["query"],
        "pool": pool,
        "factor": args.factor,
        "duration_s": args.duration,
        "load_average_before": round(os.getloadavg()[0], 2),
        "gc_freeze": args.gc_freeze,
    }
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # -- limiter off: unloaded, capacity, overload
        off = Gateway(workdir, pool=pool, adaptive=None, gc_freeze=args.gc_freeze)
        off.start()
        try:
            url = off.base + "/database/execute"
            await closed_loop(session, url, body, concurrency=1, seconds=1)  # warm-up
            unloaded = await closed_loop(session, url, body, concurrency=1, seconds=args.unloaded)
            sweep = []
            concurrency = 1
            while concurrency <= args.max_sweep:
                level = await closed_loop(
                    session, url, body, concurrency=concurrency, seconds=args.sweep
                )
                sweep.append((concurrency, len(level.latencies_ok) / level.seconds, level))
                concurrency *= 2
            capacity = max(rate for _, rate, _ in sweep)
            knee = next(c for c, rate, _ in sweep if rate >= 0.95 * capacity)
            out["unloaded_off"] = unloaded.summary()
            out["sweep"] = [
                {
                    "concurrency": c,
                    "per_s": round(rate, 1),
                    "p50_ms": level.summary()["p50_ms"],
                    "p99_ms": level.summary()["p99_ms"],
                }
                for c, rate, level in sweep
            ]
            out["capacity_per_s"] = round(capacity, 1)
            out["knee_concurrency"] = knee
            offered = capacity * args.factor
            out["offered_per_s"] = round(offered, 1)
            cpu = off.cpu_seconds()
            overload_off = await open_loop(
                session,
                url,
                body,
                rate=offered,
                seconds=args.duration,
                max_outstanding=args.max_outstanding,
                name="overload, limiter off",
            )
            overload_off.gateway_cpu = off.cpu_seconds() - cpu
            out["overload_off"] = overload_off.summary()
        finally:
            off.stop()
        await asyncio.sleep(1)  # let the off run's connections drain from the server

        # -- limiter on: unloaded (teaches the baseline), overload
        on = Gateway(workdir, pool=pool, adaptive="true", gc_freeze=args.gc_freeze)
        on.start()
        try:
            url = on.base + "/database/execute"
            await closed_loop(session, url, body, concurrency=1, seconds=1)
            unloaded_on = await closed_loop(
                session, url, body, concurrency=1, seconds=args.unloaded
            )
            out["unloaded_on"] = unloaded_on.summary()
            cpu = on.cpu_seconds()
            overload_on = await open_loop(
                session,
                url,
                body,
                rate=offered,
                seconds=args.duration,
                max_outstanding=args.max_outstanding,
                name="overload, limiter on",
            )
            overload_on.gateway_cpu = on.cpu_seconds() - cpu
            out["overload_on"] = overload_on.summary()
            stats = await fetch_json(session, on.base + "/stats")
            out["admission_stats"] = stats.get("admission", {}).get("pg")
        finally:
            on.stop()
    reference = out["unloaded_off"]["p99_ms"]
    for key in ("overload_off", "overload_on"):
        summary = out[key]
        summary["p99_vs_unloaded"] = round(summary["p99_ms"] / reference, 2)
        summary["goodput_vs_capacity"] = round(summary["goodput_per_s"] / capacity, 3)
    out["load_average_after"] = round(os.getloadavg()[0], 2)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Workload `{result['statement']}` through a pool of {result['pool']}; "
        f"capacity {result['capacity_per_s']}/s (knee at concurrency "
        f"{result['knee_concurrency']}), unloaded p99 {result['unloaded_off']['p99_ms']} ms "
        f"(limiter on: {result['unloaded_on']['p99_ms']} ms); overload {result['factor']}x = "
        f"{result['offered_per_s']}/s open loop for {result['duration_s']} s"
        f"{' (gateway started with gc.freeze())' if result['gc_freeze'] else ''}. "
        f"Load average {result['load_average_before']} before, "
        f"{result['load_average_after']} after.",
        "",
        "| concurrency (closed loop, limiter off) | req/s | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|",
        *(
            f"| {row['concurrency']} | {row['per_s']} | {row['p50_ms']} | {row['p99_ms']} |"
            for row in result["sweep"]
        ),
        "",
        "| overload | goodput/s | vs capacity | admitted p50 ms | admitted p99 ms "
        "| p99 vs unloaded | refused (503 overloaded) | refusal p99 ms | other answers "
        "| gateway CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for key in ("overload_off", "overload_on"):
        s = result[key]
        refused = s["statuses"].get("503 overloaded", 0)
        others = {k: v for k, v in s["statuses"].items() if k not in ("200", "503 overloaded")}
        if s["client_shed"]:
            others["client-shed"] = s["client_shed"]
        lines.append(
            f"| limiter {'on' if key.endswith('on') else 'off'} | {s['goodput_per_s']} "
            f"| {s['goodput_vs_capacity']:.0%} | {s['p50_ms']} | {s['p99_ms']} "
            f"| {s['p99_vs_unloaded']}x | {refused} | {s['refused_p99_ms']} "
            f"| {', '.join(f'{k}: {v}' for k, v in others.items()) or '-'} "
            f"| {s['gateway_cpu_share']} |"
        )
    stats = result.get("admission_stats")
    if stats:
        lines += [
            "",
            f"Limiter at the end: limit {stats['limit']}, baseline {stats['baseline_ms']} ms, "
            f"latency {stats['latency_ms']} ms, queue cap {stats['queue_timeout_ms']} ms, "
            f"admitted {stats['admitted']}, refused {stats['refused']}.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", choices=("sleep", "cpu"), default="sleep")
    parser.add_argument("--pool", type=int, default=4, help="pool size (sleep workload)")
    parser.add_argument("--sleep-ms", type=float, default=100.0)
    parser.add_argument("--cpu-rows", type=int, default=300_000)
    parser.add_argument("--factor", type=float, default=5.0, help="overload x capacity")
    parser.add_argument("--duration", type=float, default=15.0, help="overload seconds")
    parser.add_argument("--unloaded", type=float, default=6.0, help="unloaded seconds")
    parser.add_argument("--sweep", type=float, default=3.0, help="seconds per sweep level")
    parser.add_argument("--max-sweep", type=int, default=16, help="highest sweep concurrency")
    parser.add_argument("--max-outstanding", type=int, default=4000)
    parser.add_argument(
        "--gc-freeze", action="store_true", help="serve with gc.freeze() after start-up imports"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="iogate-overload-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
