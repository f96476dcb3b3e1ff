"""Instructions per request of ``iogate serve``, counted by callgrind.

Wall-clock and CPU-time figures on a shared 2-core machine scatter by 5-15 %
between runs, more than a few-percent effect. The number of instructions the
server executes per request does not depend on the machine's load, so two
trees can be compared exactly: each tree's ``iogate serve`` runs under
``valgrind --tool=callgrind``; after a warm-up the counters are zeroed
(``callgrind_control -z``), N point queries are sent one after another over one
keep-alive connection, and the counters are dumped (``callgrind_control -d``).

    python bench/instructions.py --baseline-src /tmp/iogate-before/src \
        [--after-src /tmp/iogate-after/src] [--requests 2000] [--rounds 2]

Default settings on both sides, no keys, PostgreSQL and SQLite point queries
(the ``/database/execute`` body of ``bench/gateway_bench.py``). Needs valgrind.
Counts include the whole process (event loop, asyncpg, the SQLite thread).
The server's idle rate (instructions per second with no request) is measured
too and subtracted for the time each run took (see ``measure``); the ``_raw``
lines keep the uncorrected figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PG_URL = os.environ.get("IOGATE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TABLE = "iogate_bench_instr"
IDLE_SECONDS = 20.0
ROWS = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(folder: Path) -> Path:
    import asyncio

    import asyncpg

    async def pg() -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            await conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name text, value int)")
            await conn.execute(
                f"INSERT INTO {TABLE} SELECT g, 'item-' || g, g * 7 % 1000 "
                f"FROM generate_series(1, {ROWS}) g"
            )
        finally:
            await conn.close()

    asyncio.run(pg())
    path = folder / "bench.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, value INTEGER)")
        db.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            ((i, f"item-{i}", i * 7 % 1000) for i in range(1, ROWS + 1)),
        )
    return path


def serve(
    src: str | None, folder: Path, sqlite_path: Path, tag: str
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    config = folder / f"{tag}.toml"
    config.write_text(
        f'[gateway]\nport = {port}\n\n[databases.pg]\ntype = "postgresql"\nurl = "{PG_URL}"\n'
        f'\n[databases.sqlite]\ntype = "sqlite"\npath = "{sqlite_path}"\n'
    )
    out = folder / f"{tag}.callgrind"
    env = dict(os.environ, PYTHONHASHSEED="0")
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    iogate = str(Path(sys.executable).with_name("iogate"))
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            iogate,
            "serve",
            "--config",
            str(config),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 1):
                return proc, port, out
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"{tag}: the server exited with {proc.returncode}") from None
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"{tag}: the server did not listen within 600 s")


def send(port: int, db: str, count: int) -> None:
    query = (
        f"SELECT id, name, value FROM {TABLE} WHERE id = $1"
        if db == "pg"
        else "SELECT id, name, value FROM items WHERE id = ?"
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(count):
        body = json.dumps({"db_name": db, "query": query, "params": [i % ROWS + 1]})
        conn.request("POST", "/database/execute", body, {"content-type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
        if reply.status != 200 or b'"item-' not in data:
            raise SystemExit(f"unexpected answer {reply.status}: {data[:200]!r}")
    conn.close()


def total_ir(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")


def counted(proc: subprocess.Popen[bytes], folder: Path, tag: str, work: Callable[[], None]) -> int:
    """Instructions the server executed while ``work`` ran."""
    subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
    work()
    for stale in folder.glob(f"{tag}.callgrind.*"):
        stale.unlink()
    subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    dumps = sorted(folder.glob(f"{tag}.callgrind.*"), key=lambda p: p.stat().st_mtime)
    return total_ir(dumps[-1])


def measure(
    src: str | None, folder: Path, sqlite_path: Path, tag: str, requests: int
) -> dict[str, float]:
    """Instructions per request, less the server's idle work over the same time.

    Work done per second (the dashboard's sampler, pool health checks,
    timers) is some 50 times slower under valgrind, so it would weigh 50
    times more per request than it does at full speed: its rate is measured
    on the idle server and subtracted. ``<db>_raw`` keeps the plain figure.
    """
    proc, port, _ = serve(src, folder, sqlite_path, tag)
    figures: dict[str, float] = {}
    try:
        send(port, "pg", 100)  # start-up work done before the idle measurement
        idle = counted(proc, folder, tag, lambda: time.sleep(IDLE_SECONDS))
        idle_rate = idle / IDLE_SECONDS
        figures["idle_per_s"] = idle_rate
        for db in ("pg", "sqlite"):
            send(port, db, 300)  # warm-up: pools, statement caches, code paths
            started = time.monotonic()
            total = counted(proc, folder, tag, lambda db=db: send(port, db, requests))
            elapsed = time.monotonic() - started
            figures[f"{db}_raw"] = total / requests
            figures[db] = (total - idle_rate * elapsed) / requests
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", required=True, help="the other tree's src directory")
    parser.add_argument(
        "--after-src", default=None, help="the tree to compare (default: this one, as installed)"
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    folder = Path(tempfile.mkdtemp(prefix="iogate-instr-"))
    sqlite_path = prepare(folder)
    rows: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for r in range(args.rounds):
        order = [("before", args.baseline_src), ("after", args.after_src)]
        if r % 2:
            order.reverse()
        for side, src in order:
            for db, ir in measure(src, folder, sqlite_path, f"{side}{r}", args.requests).items():
                rows[side].setdefault(db, []).append(ir)
                unit = "instructions/s idle" if db == "idle_per_s" else "instructions/request"
                print(f"round {r} {side:6} {db:10} {ir:12,.0f} {unit}", flush=True)
    for db in ("pg_raw", "sqlite_raw", "pg", "sqlite"):
        before = min(rows["before"][db])
        after = min(rows["after"][db])
        print(
            f"{db:10} before {before:12,.0f}  after {after:12,.0f}"
            f"  after/before {after / before:.4f}"
        )
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
