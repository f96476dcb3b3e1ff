"""What the default logging costs the gateway: ``--log-level info`` vs ``warning``.

Two (or four) ``iogate serve`` processes with the same config (a PostgreSQL
database ``pg`` and a SQLite database ``sqlite``, no API keys), one started
with the default log level (``info``: an access line, an audit line and an
operation line per request) and one with ``--log-level warning`` (none of
them). Each writes its log to a file, as a process under a supervisor
writes to a pipe or a file. ``POST /database/execute`` with a random-id point
query, under wrk, targets interleaved round by round (every other round in
reverse order) exactly as ``bench/gateway_bench.py`` does; the ratio
default / warning is the figure issue 17 asks to keep at 0.90 or more.

``--baseline-src DIR`` adds the same pair served from another source tree
(e.g. ``git archive HEAD src | tar -x -C /tmp/before``), so before and after
come from one run. After the run the default servers' log files are checked:
one audit line per request wrk reports (plus the preflight and warm-up), so
a faster figure cannot come from lines that were dropped.

Run: ``.venv/bin/python bench/logging_cost.py [--duration S] [--rounds N]
[--only postgres|sqlite] [--baseline-src DIR]``. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gateway_bench import (
    PG_URL,
    ROWS,
    Server,
    Target,
    drop_postgres,
    execute_body,
    iogate_server,
    make_postgres,
    make_sqlite,
    point_queries,
    preflight,
    run_wrk,
)


def with_level(server: Server, level: str | None) -> Server:
    """The same server with ``--log-level level``, or with none (the default)."""
    command = list(server.command)
    at = command.index("--log-level")
    del command[at : at + 2]
    if level is not None:
        command += ["--log-level", level]
    server.command = command
    return server


def audit_lines(server: Server) -> int:
    assert server.log is not None
    with server.log.open("rb") as log:
        return sum(1 for line in log if b'"iogate.audit"' in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--only", choices=("postgres", "sqlite"))
    parser.add_argument("--baseline-src", metavar="DIR", help="also serve the iogate in DIR")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("SKIP logging cost bench: wrk is not installed (apt-get install -y wrk)")
        return

    folder = Path(tempfile.mkdtemp(prefix="iogate-logbench-"))
    table = f"logbench_items_{uuid.uuid4().hex[:8]}"
    sqlite_path = folder / "bench.db"
    make_sqlite(sqlite_path)
    asyncio.run(make_postgres(table))
    pg_query, lite_query = point_queries(table)
    trees: list[tuple[str, str | None]] = [("iogate", None)]
    if args.baseline_src:
        trees.append(("baseline", args.baseline_src))
    pairs: list[tuple[str, Server, Server]] = []
    for who, src in trees:
        pair = [
            with_level(
                iogate_server(
                    folder, sqlite_path, PG_URL, name=f"{who}-{level or 'default'}", src=src
                ),
                level,
            )
            for level in ("warning", None)
        ]
        pairs.append((who, pair[0], pair[1]))
    servers = [server for _, warn, default in pairs for server in (warn, default)]
    targets: list[Target] = []
    try:
        for server in servers:
            server.start(folder)
        for server in servers:
            server.wait_ready()
        for db, name, query in (("PostgreSQL", "pg", pg_query), ("SQLite", "sqlite", lite_query)):
            if args.only not in (None, "postgres" if name == "pg" else "sqlite"):
                continue
            body = execute_body(name, query)
            for who, warn, default in pairs:
                targets.append(
                    Target(f"{who} {db} warning", warn, "POST", "/database/execute", body)
                )
                targets.append(
                    Target(f"{who} {db} default", default, "POST", "/database/execute", body)
                )
        scripts = {}
        for target in targets:
            preflight(target)
            script = folder / f"{target.label.replace(' ', '_')}.lua"
            script.write_text(target.lua(), encoding="utf-8")
            scripts[target.label] = script
        load_before = os.getloadavg()
        for target in targets:
            run_wrk(target, scripts[target.label], 1.0, record=False)
        for number in range(args.rounds):
            for target in targets if number % 2 == 0 else reversed(targets):
                run_wrk(target, scripts[target.label], args.duration, record=True)
        load_after = os.getloadavg()
    finally:
        for server in servers:
            server.stop()
        asyncio.run(drop_postgres(table))

    print(
        f"wrk -t2 -c50 -d{args.duration:g}s, {args.rounds} interleaved rounds, random id in "
        f"{ROWS:,} rows, logs to a file; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after.\n"
    )
    print("| target | req/s median (min-max) | p50 ms | p99 ms | server CPU us/req | errors |")
    print("|---|---|---|---|---|---|")
    for t in targets:
        print(
            f"| {t.label} | {statistics.median(t.rps):,.0f} ({min(t.rps):,.0f}-"
            f"{max(t.rps):,.0f}) | {statistics.median(t.p50_ms):.2f} | "
            f"{statistics.median(t.p99_ms):.2f} | {statistics.median(t.cpu_us):.0f} | "
            f"{t.errors} |"
        )
    print()
    by_label = {t.label: t for t in targets}
    for who, _, default in pairs:
        for db in ("PostgreSQL", "SQLite"):
            warn_t, default_t = (
                by_label.get(f"{who} {db} warning"),
                by_label.get(f"{who} {db} default"),
            )
            if warn_t is None or default_t is None:
                continue
            rounds = [d / w for d, w in zip(default_t.rps, warn_t.rps, strict=True)]
            cpu_w, cpu_d = statistics.median(warn_t.cpu_us), statistics.median(default_t.cpu_us)
            print(
                f"- {who} {db} default / warning: **{statistics.median(rounds):.3f}** "
                f"(per round: {', '.join(f'{r:.2f}' for r in rounds)}); server CPU per "
                f"request {cpu_d:.0f} vs {cpu_w:.0f} us"
            )
        print(f"- {who} default server: {audit_lines(default):,} audit lines in its log")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
