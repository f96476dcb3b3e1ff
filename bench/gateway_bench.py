"""The HTTP gateway under wrk: iogate vs a bare Starlette floor vs Datasette.

Three servers, each a subprocess on a free loopback port, served by uvicorn
with uvloop and httptools, one worker, no access log, log level warning:

- **iogate**: ``iogate serve --config <tmp toml>`` with a PostgreSQL database
  ``pg`` and a SQLite database ``sqlite`` at their default pool sizes, no API
  keys; ``POST /database/execute`` with a point query.
- **floor**: ``bench/starlette_floor.py``, the same query through the same
  drivers (same pool sizes) behind one bare Starlette endpoint.
- **Datasette** on the same SQLite file (SQL thread count set to iogate's
  pool size), ``GET /bench.json?sql=...&id=N&_shape=array``: the same
  parameterised query through Datasette's JSON API. It is started through
  Datasette's Python API rather than ``datasette serve`` because the CLI
  hard-codes uvicorn's access log and log level ``info``, which the other two
  servers do not pay for.

Each request looks up a random id (a Lua ``request()`` per request) in a
100k-row ``items(id, name, value)`` table. Targets run one after another,
interleaved (iogate, floor, ..., iogate, floor, ...), so drift of this shared
machine hits them alike; the tables show the median of the rounds. "server
CPU us/req" is the server process's CPU time (all threads, from /proc) per
request, a figure that moves far less with machine load than req/s does.

Run: ``.venv/bin/python bench/gateway_bench.py [--quick] [--duration S] [--rounds N]``.
Needs ``wrk`` (``apt-get install -y wrk``); without it the bench prints a skip
line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("IOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROWS = 100_000
CONNECTIONS = 50
THREADS = 2
START_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

UVICORN_FLAGS = dict(
    loop="uvloop", http="httptools", workers=1, access_log=False, log_level="warning"
)


# -- data ------------------------------------------------------------------------


def make_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, value INTEGER)")
        conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            ((i, f"item-{i}", i * 7 % 1000) for i in range(1, ROWS + 1)),
        )


async def make_postgres(table: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, value int)")
        await conn.execute(
            f"INSERT INTO {table} SELECT g, 'item-' || g, g * 7 % 1000 "
            f"FROM generate_series(1, {ROWS}) g"
        )
        await conn.execute(f"ANALYZE {table}")
    finally:
        await conn.close()


async def drop_postgres(table: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await conn.close()


# -- servers ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, folder: Path) -> None:
        self.log = folder / f"{self.name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        """Poll until the server answers any HTTP request (lifespan done), with a deadline."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up:\n{self.tail()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # 404/405: it answers
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT}s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        """utime + stime of the server process, every thread included."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def iogate_server(
    folder: Path, sqlite_path: Path, pg_url: str, *, name: str = "iogate", src: str | None = None
) -> Server:
    """``iogate serve``; with ``src``, that source tree's iogate (a baseline checkout)."""
    port = free_port()
    config = folder / f"{name}.toml"
    config.write_text(
        f'[gateway]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[databases.pg]\ntype = "postgresql"\nurl = "{pg_url}"\n\n'
        f'[databases.sqlite]\ntype = "sqlite"\npath = "{sqlite_path}"\n',
        encoding="utf-8",
    )
    iogate = Path(sys.executable).parent / "iogate"
    # `iogate serve` runs uvicorn with loop/http "auto" (uvloop, httptools when
    # installed, as they are here), one worker and no uvicorn access log.
    command = [str(iogate), "serve", "--config", str(config), "--log-level", "warning"]
    env = {"PYTHONPATH": str(Path(src).resolve())} if src else {}
    return Server(name, command, port, env)


def floor_server(sqlite_path: Path, pg_url: str) -> Server:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.starlette_floor:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    env = {
        "FLOOR_PG_URL": pg_url,
        "FLOOR_SQLITE_PATH": str(sqlite_path),
        "FLOOR_PG_POOL": "20",
        "FLOOR_SQLITE_POOL": "5",
    }
    return Server("floor", command, port, env)


DATASETTE_SCRIPT = f"""
import sys, uvicorn
from datasette.app import Datasette
path, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ds = Datasette([path], settings={{"num_sql_threads": threads}})
uvicorn.run(ds.app(), host="127.0.0.1", port=port, lifespan="on", **{UVICORN_FLAGS!r})
"""


def datasette_server(sqlite_path: Path) -> Server | None:
    try:
        import datasette  # noqa: F401
    except ImportError:
        return None
    port = free_port()
    command = [sys.executable, "-c", DATASETTE_SCRIPT, str(sqlite_path), str(port), "5"]
    return Server("datasette", command, port)


# -- targets and wrk ---------------------------------------------------------------


@dataclass
class Target:
    label: str
    server: Server
    method: str
    path: str  # "{id}" stands for the random id
    body: str | None = None
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: int = 0

    def url(self, row_id: int) -> str:
        return f"http://127.0.0.1:{self.server.port}{self.path.replace('{id}', str(row_id))}"

    def lua(self) -> str:
        def fmt(template: str) -> str:
            return template.replace("%", "%%").replace("{id}", "%d")

        body = f"string.format([==[{fmt(self.body)}]==], id)" if self.body else "nil"
        return f"""
local counter = 1
function setup(thread)
  thread:set("seed", counter * 7919)
  counter = counter + 1
end
function init(args)
  math.randomseed(seed)
end
wrk.method = "{self.method}"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local id = math.random(1, {ROWS})
  return wrk.format(nil, string.format([==[{fmt(self.path)}]==], id), nil, {body})
end
"""


def execute_body(db_name: str, query: str) -> str:
    return json.dumps({"db_name": db_name, "query": query, "params": ["{id}"]}).replace(
        '"{id}"', "{id}"
    )


def preflight(target: Target, row_id: int = 4242) -> None:
    """One request by hand: the answer must hold the row, or the figures mean nothing."""
    body = target.body.replace("{id}", str(row_id)).encode() if target.body else None
    request = urllib.request.Request(
        target.url(row_id),
        data=body,
        method=target.method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    rows = answer["data"] if isinstance(answer, dict) else answer
    expected = {"id": row_id, "name": f"item-{row_id}", "value": row_id * 7 % 1000}
    if rows != [expected]:
        raise RuntimeError(f"{target.label}: expected [{expected}], got {answer!r}")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def run_wrk(target: Target, script: Path, seconds: float, record: bool) -> None:
    cpu_before = target.server.cpu_seconds()
    done = subprocess.run(
        [
            "wrk",
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{target.server.port}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    cpu = target.server.cpu_seconds() - cpu_before
    out = done.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if not record:
        return
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    target.errors += int(bad.group(1)) if bad else 0
    if socket_errors:
        target.errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    target.rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))  # type: ignore[union-attr]
    target.p50_ms.append(_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)))  # type: ignore[union-attr]
    target.p99_ms.append(_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)))  # type: ignore[union-attr]
    target.cpu_us.append(cpu / max(1, requests) * 1e6)


# -- report ------------------------------------------------------------------------


def report(targets: list[Target]) -> list[str]:
    by_label = {t.label: t for t in targets}
    lines = [
        "| target | req/s median (min-max) | p50 ms | p99 ms | server CPU us/req | errors |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets:
        lines.append(
            f"| {t.label} | {statistics.median(t.rps):,.0f} "
            f"({min(t.rps):,.0f}-{max(t.rps):,.0f}) | {statistics.median(t.p50_ms):.2f} | "
            f"{statistics.median(t.p99_ms):.2f} | {statistics.median(t.cpu_us):.0f} | "
            f"{t.errors} |"
        )
    lines.append("")
    for ours, other in (
        ("iogate PostgreSQL", "floor PostgreSQL"),
        ("iogate SQLite", "floor SQLite"),
        ("iogate SQLite", "Datasette SQLite"),
        ("iogate PostgreSQL", "baseline PostgreSQL"),
        ("iogate SQLite", "baseline SQLite"),
    ):
        if ours in by_label and other in by_label:
            a, b = by_label[ours], by_label[other]
            ratio = statistics.median(a.rps) / statistics.median(b.rps)
            per_round = ", ".join(f"{x / y:.2f}" for x, y in zip(a.rps, b.rps, strict=True))
            lines.append(
                f"- {ours} / {other}: **{ratio:.2f}** (per round: {per_round}); "
                f"server CPU per request {statistics.median(a.cpu_us):.0f} vs "
                f"{statistics.median(b.cpu_us):.0f} us"
            )
    return lines


# -- main --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="3 s per run (default 10 s)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--only", choices=("postgres", "sqlite"), help="measure one database only")
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also serve the iogate found in DIR (e.g. the src/ of `git archive <commit> src`) "
        "and interleave it as 'baseline', for before/after figures",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after starting and checking the servers, print their ports and wait for Enter "
        "(to profile one by hand), then measure",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("SKIP gateway bench: wrk is not installed (apt-get install -y wrk)")
        return
    seconds = args.duration or (3.0 if args.quick else 10.0)
    import asyncio

    folder = Path(tempfile.mkdtemp(prefix="iogate-gwbench-"))
    table = f"gwbench_items_{uuid.uuid4().hex[:8]}"
    sqlite_path = folder / "bench.db"
    make_sqlite(sqlite_path)
    asyncio.run(make_postgres(table))
    servers: list[Server] = []
    try:
        iogate = iogate_server(folder, sqlite_path, PG_URL)
        floor = floor_server(sqlite_path, PG_URL)
        datasette = datasette_server(sqlite_path)
        baseline = (
            iogate_server(folder, sqlite_path, PG_URL, name="baseline", src=args.baseline_src)
            if args.baseline_src
            else None
        )
        servers = [s for s in (iogate, floor, datasette, baseline) if s is not None]
        for server in servers:
            server.start(folder)
        for server in servers:
            server.wait_ready()

        pg_query = f"SELECT id, name, value FROM {table} WHERE id = $1"
        lite_query = "SELECT id, name, value FROM items WHERE id = ?"
        post = "/database/execute"
        targets: list[Target] = []
        if args.only in (None, "postgres"):
            body = execute_body("pg", pg_query)
            targets += [
                Target("iogate PostgreSQL", iogate, "POST", post, body),
                Target("floor PostgreSQL", floor, "POST", post, body),
            ]
            if baseline is not None:
                targets.append(Target("baseline PostgreSQL", baseline, "POST", post, body))
        if args.only in (None, "sqlite"):
            body = execute_body("sqlite", lite_query)
            targets += [
                Target("iogate SQLite", iogate, "POST", post, body),
                Target("floor SQLite", floor, "POST", post, body),
            ]
            if baseline is not None:
                targets.append(Target("baseline SQLite", baseline, "POST", post, body))
            if datasette is not None:
                sql = urllib.parse.quote("SELECT id, name, value FROM items WHERE id = :id")
                path = f"/bench.json?sql={sql}&id={{id}}&_shape=array"
                targets.append(Target("Datasette SQLite", datasette, "GET", path))
            else:
                print("(Datasette not installed: pip install datasette; its row is skipped)")

        scripts = {}
        for target in targets:
            preflight(target)
            script = folder / f"{target.label.replace(' ', '_')}.lua"
            script.write_text(target.lua(), encoding="utf-8")
            scripts[target.label] = script
        if args.keep_running:
            for server in servers:
                print(f"{server.name}: port {server.port}, pid {server.process.pid}")  # type: ignore[union-attr]
            input("Enter to measure...")

        load_before = os.getloadavg()
        for target in targets:  # warm-up: pools grown, statements prepared, caches hot
            run_wrk(target, scripts[target.label], 1.0, record=False)
        for _ in range(args.rounds):
            for target in targets:
                run_wrk(target, scripts[target.label], seconds, record=True)
        load_after = os.getloadavg()

        print(
            f"wrk -t{THREADS} -c{CONNECTIONS} -d{seconds:g}s --latency, {args.rounds} "
            f"interleaved rounds, random id in {ROWS:,} rows; load average "
            f"{load_before[0]:.1f} before, {load_after[0]:.1f} after.\n"
        )
        print("\n".join(report(targets)))
    finally:
        for server in servers:
            server.stop()
        asyncio.run(drop_postgres(table))
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
