"""The HTTP gateway under wrk: iogate vs a bare Starlette floor vs Datasette.

Three kinds of server, each a subprocess on a free loopback port, served by
uvicorn with uvloop and httptools, one worker, no access log, log level
warning:

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

**Keyed targets** (``--suite keyed`` or ``all``) run on a second iogate
server (and a second baseline) configured with two API keys — a reader
(``db:pg:read``, ``db:sqlite:read``) and an ops key (``ops:*``) — and two
named operations, ``[operations.point_pg]`` / ``[operations.point_sqlite]``,
running the same point query:

- "read key": ``POST /database/execute`` with ``Authorization: Bearer
  <reader>``. Since guarded SQL, a key without ``db:NAME:admin`` is
  classified (pglast on PostgreSQL, the authorizer on SQLite) and run in a
  read-only transaction iogate opens and rolls back. Before that change the
  same key's SELECT ran read-only too, unclassified (PostgreSQL: asyncpg's
  ``transaction(readonly=True)``, committed; SQLite: on a ``query_only``
  reader connection).
- "named op": ``POST /operations/point_pg`` ``{"id": N}`` with the ops key
  (named operations are trusted: their SQL is in the config).

Why separate servers rather than an admin key for the keyless targets: with
keys configured every request must authenticate (a SHA-256 of the token,
compared with every key), so admin-key figures would no longer be the
keyless figures measured so far, nor comparable with the floor, which does
no auth. Keeping the keyless servers as they were and putting the keys on
their own servers, identical for the current tree and the baseline, leaves
one difference between "iogate ... read key" and "baseline ... read key":
what the change did to that request.

Each request looks up a random id (a Lua ``request()`` per request) in a
100k-row ``items(id, name, value)`` table. Targets run one after another,
interleaved, every other round in reverse order (A B C, C B A, ...) so a
drift of this shared machine within a round hits a pair alike; the tables
show the median of the rounds, and each before/after line also gives the
ratio round by round. "server CPU us/req" is the server process's CPU time
(all threads, from /proc) per request, a figure that moves far less with
machine load than req/s does.

Run: ``.venv/bin/python bench/gateway_bench.py [--quick] [--duration S]
[--rounds N] [--suite open|keyed|all] [--only postgres|sqlite]
[--baseline-src DIR]``. Needs ``wrk`` (``apt-get install -y wrk``); without
it the bench prints a skip line and exits 0.
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
# Tokens of the keyed servers' two API keys (loopback only, a throw-away config).
READER_KEY = "bench-reader-key"
OPS_KEY = "bench-ops-key"
SUITES = ("open", "keyed", "all")

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


def keyed_config(pg_query: str, lite_query: str) -> str:
    """TOML for the keyed servers: a reader key, an ops key and two named
    operations running the same point query as the ``/database/execute`` targets."""
    return (
        "\n[[gateway.api_keys]]\n"
        f'name = "reader"\nkey = "{READER_KEY}"\nscopes = ["db:pg:read", "db:sqlite:read"]\n'
        "\n[[gateway.api_keys]]\n"
        f'name = "ops"\nkey = "{OPS_KEY}"\nscopes = ["ops:*"]\n'
        f'\n[operations.point_pg]\ndatabase = "pg"\nquery = "{pg_query}"\nparams = ["id"]\n'
        f'\n[operations.point_sqlite]\ndatabase = "sqlite"\nquery = "{lite_query}"\n'
        'params = ["id"]\n'
    )


def iogate_server(
    folder: Path,
    sqlite_path: Path,
    pg_url: str,
    *,
    name: str = "iogate",
    src: str | None = None,
    extra_config: str = "",
) -> Server:
    """``iogate serve``; with ``src``, that source tree's iogate (a baseline
    checkout); ``extra_config`` (TOML) goes after ``[gateway]``'s keys."""
    port = free_port()
    config = folder / f"{name}.toml"
    config.write_text(
        f'[gateway]\nhost = "127.0.0.1"\nport = {port}\n{extra_config}\n'
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
    key: str | None = None  # sent as "Authorization: Bearer <key>"
    refused_write: str | None = None  # a body the key must be refused (checked once)
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    errors: int = 0

    def url(self, row_id: int) -> str:
        return f"http://127.0.0.1:{self.server.port}{self.path.replace('{id}', str(row_id))}"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.key is not None:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    def lua(self) -> str:
        def fmt(template: str) -> str:
            return template.replace("%", "%%").replace("{id}", "%d")

        body = f"string.format([==[{fmt(self.body)}]==], id)" if self.body else "nil"
        headers = "\n".join(
            f'wrk.headers["{name}"] = "{value}"' for name, value in self.headers().items()
        )
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
{headers}
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
        headers=target.headers(),
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    rows = answer["data"] if isinstance(answer, dict) else answer
    expected = {"id": row_id, "name": f"item-{row_id}", "value": row_id * 7 % 1000}
    if rows != [expected]:
        raise RuntimeError(f"{target.label}: expected [{expected}], got {answer!r}")


def preflight_refused(target: Target, body: str) -> None:
    """The keyed target's key must not be able to write: a harmless write
    (``body``, on no row) has to come back refused, or the key is not a reader."""
    request = urllib.request.Request(
        target.url(0), data=body.encode(), method="POST", headers=target.headers()
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read()
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            return
        answer = exc.read()
    raise RuntimeError(f"{target.label}: a write with the reader key was not refused: {answer!r}")


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


@dataclass
class Fleet:
    """The servers one run starts; None where the suite or the flags leave one out."""

    iogate: Server | None = None
    floor: Server | None = None
    datasette: Server | None = None
    baseline: Server | None = None
    keyed: Server | None = None
    keyed_baseline: Server | None = None

    @classmethod
    def build(
        cls, folder: Path, sqlite_path: Path, args: argparse.Namespace, keyed_toml: str
    ) -> Fleet:
        def iogate_pair(suffix: str, extra: str) -> tuple[Server, Server | None]:
            current = iogate_server(
                folder, sqlite_path, PG_URL, name=f"iogate{suffix}", extra_config=extra
            )
            if not args.baseline_src:
                return current, None
            before = iogate_server(
                folder,
                sqlite_path,
                PG_URL,
                name=f"baseline{suffix}",
                src=args.baseline_src,
                extra_config=extra,
            )
            return current, before

        fleet = cls()
        if args.suite in ("open", "all"):
            fleet.iogate, fleet.baseline = iogate_pair("", "")
            fleet.floor = floor_server(sqlite_path, PG_URL)
            if args.only in (None, "sqlite"):
                fleet.datasette = datasette_server(sqlite_path)
                if fleet.datasette is None:
                    print("(Datasette not installed: pip install datasette; its row is skipped)")
        if args.suite in ("keyed", "all"):
            fleet.keyed, fleet.keyed_baseline = iogate_pair("-keyed", keyed_toml)
        return fleet

    def servers(self) -> list[Server]:
        every = (
            self.iogate,
            self.floor,
            self.datasette,
            self.baseline,
            self.keyed,
            self.keyed_baseline,
        )
        return [server for server in every if server is not None]


def point_queries(table: str) -> tuple[str, str]:
    """The point query on PostgreSQL (``table``) and on SQLite (``items``)."""
    return (
        f"SELECT id, name, value FROM {table} WHERE id = $1",
        "SELECT id, name, value FROM items WHERE id = ?",
    )


def build_targets(fleet: Fleet, table: str, only: str | None) -> list[Target]:
    """Targets in run order; each iogate target is next to its baseline."""
    pg_query, lite_query = point_queries(table)
    post = "/database/execute"
    targets: list[Target] = []
    for db, name, query, delete in (
        ("PostgreSQL", "pg", pg_query, f"DELETE FROM {table} WHERE id = $1"),
        ("SQLite", "sqlite", lite_query, "DELETE FROM items WHERE id = ?"),
    ):
        if only not in (None, "postgres" if name == "pg" else "sqlite"):
            continue
        body = execute_body(name, query)
        if fleet.iogate is not None and fleet.floor is not None:
            targets += [
                Target(f"iogate {db}", fleet.iogate, "POST", post, body),
                Target(f"floor {db}", fleet.floor, "POST", post, body),
            ]
            if fleet.baseline is not None:
                targets.append(Target(f"baseline {db}", fleet.baseline, "POST", post, body))
        if name == "sqlite" and fleet.datasette is not None:
            sql = urllib.parse.quote("SELECT id, name, value FROM items WHERE id = :id")
            path = f"/bench.json?sql={sql}&id={{id}}&_shape=array"
            targets.append(Target("Datasette SQLite", fleet.datasette, "GET", path))
        keyed = [("iogate", fleet.keyed), ("baseline", fleet.keyed_baseline)]
        # A write on no row (id 0): the reader key must be refused it.
        refused = execute_body(name, delete).replace("{id}", "0")
        for who, server in keyed:
            if server is not None:
                targets.append(
                    Target(
                        f"{who} {db} read key",
                        server,
                        "POST",
                        post,
                        body,
                        key=READER_KEY,
                        refused_write=refused,
                    )
                )
        op_path, op_body = f"/operations/point_{name}", '{"id": {id}}'
        for who, server in keyed:
            if server is not None:
                targets.append(
                    Target(f"{who} {db} named op", server, "POST", op_path, op_body, key=OPS_KEY)
                )
    return targets


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
    pairs = [
        ("iogate PostgreSQL", "floor PostgreSQL"),
        ("iogate SQLite", "floor SQLite"),
        ("iogate SQLite", "Datasette SQLite"),
    ]
    for db in ("PostgreSQL", "SQLite"):
        pairs += [
            (f"iogate {db}{kind}", f"baseline {db}{kind}")
            for kind in ("", " read key", " named op")
        ]
        pairs.append((f"iogate {db} read key", f"iogate {db}"))
    for ours, other in pairs:
        if ours in by_label and other in by_label:
            a, b = by_label[ours], by_label[other]
            ratio = statistics.median(a.rps) / statistics.median(b.rps)
            rounds = [x / y for x, y in zip(a.rps, b.rps, strict=True)]
            per_round = ", ".join(f"{r:.2f}" for r in rounds)
            cpu_a, cpu_b = statistics.median(a.cpu_us), statistics.median(b.cpu_us)
            lines.append(
                f"- {ours} / {other}: **{ratio:.3f}** (median of the rounds' ratios "
                f"{statistics.median(rounds):.3f}; per round: {per_round}); server CPU per "
                f"request {cpu_a:.0f} vs {cpu_b:.0f} us ({cpu_a / cpu_b:.3f})"
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
        "--suite",
        choices=SUITES,
        default="all",
        help="open: servers without API keys (iogate, floor, Datasette); keyed: the servers "
        "with a reader and an ops key (read-key /database/execute, named operations); "
        "all: both (default)",
    )
    parser.add_argument(
        "--baseline-src",
        metavar="DIR",
        help="also serve the iogate found in DIR (e.g. the src/ of `git archive <commit> src` "
        "or of a `git worktree`) and interleave it as 'baseline', for before/after figures",
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
    pg_query, lite_query = point_queries(table)
    servers: list[Server] = []
    try:
        fleet = Fleet.build(folder, sqlite_path, args, keyed_config(pg_query, lite_query))
        servers = fleet.servers()
        for server in servers:
            server.start(folder)
        for server in servers:
            server.wait_ready()
        targets = build_targets(fleet, table, args.only)

        scripts = {}
        for target in targets:
            preflight(target)
            if target.refused_write is not None:
                preflight_refused(target, target.refused_write)
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
        for number in range(args.rounds):
            # Every other round backwards, so a drift within a round favours no side.
            for target in targets if number % 2 == 0 else reversed(targets):
                run_wrk(target, scripts[target.label], seconds, record=True)
        load_after = os.getloadavg()

        print(
            f"wrk -t{THREADS} -c{CONNECTIONS} -d{seconds:g}s --latency, {args.rounds} "
            f"interleaved rounds (every other one in reverse order), random id in {ROWS:,} "
            f"rows, suite {args.suite}; load average {load_before[0]:.1f} before, "
            f"{load_after[0]:.1f} after.\n"
        )
        print("\n".join(report(targets)))
    finally:
        for server in servers:
            server.stop()
        asyncio.run(drop_postgres(table))
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
